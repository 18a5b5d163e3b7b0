"""Positional-corrected window attention (paper Sec. 4.2): a naive per-frame reference with explicit key lists and
positions, written from the definition, against the vectorized processor."""

import math

import pytest
import torch

from animatezero.processors import FramePatternAttention, SlotIndex, slot_attention
from animatezero.windows import (
    anchored_sliding_pattern,
    bidirectional_window_pattern,
    global_pattern,
    window_pattern,
)
from models.attention import Attention, attention


def make_layer(dim=16, heads=2, max_positions=32, seed=0):
    torch.manual_seed(seed)
    layer = Attention(dim, heads, max_positions=max_positions)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return layer


def naive_window_keys(f, w, correction, slots=None):
    """From the issue's definition: frame i sees frames max(1, i-w+1)..i after copies of frame 0, in `slots` slots."""
    s = slots or f
    rows = []
    for i in range(f):
        real = list(range(max(1, i - w + 1), i + 1)) if i > 0 else []
        real = real[len(real) - min(len(real), s - 1) :]
        frames = [0] * (s - len(real)) + real
        positions = list(range(s)) if correction else frames
        rows.append((frames, positions, s - 1 if correction else i))
    return rows


def naive_attention(layer, x, rows):
    """out_i = sum_m softmax_m(<W_q(z_i + p_q), W_k(z_src + p_m)> / sqrt(d)) W_v(z_src + p_m), per head, by loops."""
    pe = layer.pos_encoder.pe[0]
    n, f, c = x.shape
    h = layer.heads
    d = c // h
    out = torch.zeros(n, f, c)
    for i, (frames, positions, qpos) in enumerate(rows):
        q = layer.to_q(x[:, i] + pe[qpos])  # [n, c]
        keys = torch.stack([layer.to_k(x[:, j] + pe[p]) for j, p in zip(frames, positions)], 1)  # [n, S, c]
        vals = torch.stack([layer.to_v(x[:, j] + pe[p]) for j, p in zip(frames, positions)], 1)
        for head in range(h):
            sl = slice(head * d, (head + 1) * d)
            scores = torch.einsum("nc,nsc->ns", q[:, sl], keys[:, :, sl]) / math.sqrt(d)
            out[:, i, sl] = torch.einsum("ns,nsc->nc", scores.softmax(-1), vals[:, :, sl])
    return layer.to_out(out)


def test_pattern_matches_paper_figure():
    """Fig. 3(b), f = 6, query frame 3 (1-based): keys k_1^1 k_1^2 k_1^3 k_1^4 k_2^5 k_3^6, query q_3^6."""
    p = window_pattern(6)
    assert p.src[2].tolist() == [0, 0, 0, 0, 1, 2]
    assert p.key_pos[2].tolist() == [0, 1, 2, 3, 4, 5] and p.query_pos[2].item() == 5
    assert p.src[0].tolist() == [0] * 6 and p.src[5].tolist() == list(range(6))
    q = window_pattern(6, correction=False)
    assert q.key_pos[2].tolist() == [0, 0, 0, 0, 1, 2] and q.query_pos[2].item() == 2


@pytest.mark.parametrize("f", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("w", [None, 1, 3, 4])
@pytest.mark.parametrize("correction", [True, False])
def test_vectorized_equals_naive(f, w, correction):
    layer = make_layer()
    x = torch.randn(3, f, 16, generator=torch.Generator().manual_seed(f))
    with torch.no_grad():
        ours = FramePatternAttention(window_pattern(f, w, correction=correction))(layer, x, None)
        ref = naive_attention(layer, x, naive_window_keys(f, w or f, correction))
    assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("f, slots", [(20, 8), (33, 32)])
def test_long_clip_window_equals_naive(f, slots):
    layer = make_layer(max_positions=slots)
    x = torch.randn(2, f, 16)
    with torch.no_grad():
        ours = FramePatternAttention(window_pattern(f, correction=True, num_slots=slots))(layer, x, None)
        ref = naive_attention(layer, x, naive_window_keys(f, f, True, slots))
    assert (ours - ref).abs().max().item() < 1e-5


def test_global_pattern_equals_default_and_last_frame_equals_global():
    layer = make_layer()
    x = torch.randn(4, 16, 16)
    with torch.no_grad():
        default = layer(x)  # the default processor: every frame attends to every frame
        glob = FramePatternAttention(global_pattern(16))(layer, x, None)
        window = FramePatternAttention(window_pattern(16))(layer, x, None)
    assert (glob - default).abs().max().item() < 1e-5
    # with correction, the last frame's window is the whole clip at the original positions
    assert (window[:, -1] - default[:, -1]).abs().max().item() < 1e-5
    assert (window[:, :-1] - default[:, :-1]).abs().max().item() > 1e-3


def test_anchored_sliding_pattern():
    p = anchored_sliding_pattern(40, 32)
    assert (p.src[:, 0] == 0).all()  # every window keeps frame 0
    assert p.src.max().item() == 39 and p.query_pos.max().item() < 32
    for i in range(1, 40):  # the query frame sits in its own window, at its own slot's position
        assert p.src[i, p.query_pos[i]].item() == i
    assert torch.equal(anchored_sliding_pattern(16, 32).src, global_pattern(16).src)


def test_positions_beyond_table_raise():
    layer = make_layer(max_positions=8)
    with pytest.raises(ValueError, match="beyond this motion module's 8 positions"):
        layer(torch.randn(1, 9, 16))


def test_long_clip_without_correction_animates(tiny_pipe):
    """Issue 15 item 11: sliding windows without position correction used to index frame positions past the table
    ("frame position 33 is beyond this motion module's 32 positions") at the first video step. Positions now shift
    with the window so the query keeps the last position; the frame-0 copies keep position 0."""
    from animatezero import Controls

    image = tiny_pipe.text_to_image("a red fox", height=64, width=64, steps=2, seed=5)
    f = tiny_pipe.motion_module.config.max_positions + 2  # 34 frames with v2's 32 positions
    controls = Controls(position_correction=False, sliding_windows=True)
    video = tiny_pipe.animate(image, num_frames=f, seed=0, controls=controls)
    assert video.frames.shape[0] == f and torch.isfinite(video.frames).all()
    assert (video.frames[0] - image.image).abs().max().item() <= 1e-3  # frame 0 is still the image
    corrected = tiny_pipe.animate(image, num_frames=f, seed=0, controls=Controls(sliding_windows=True))
    assert not torch.equal(video.frames[1:], corrected.frames[1:])  # the switch reaches the windowed modules


def test_long_clip_without_correction_equals_naive():
    """Without correction on a long clip, the window's frames keep their own positions shifted so that the query sits
    at the last position S-1; the copies of frame 0 stay at position 0."""
    f, slots = 20, 8
    rows = []
    for frames, _, _ in naive_window_keys(f, f, False, slots):
        i = frames[-1]
        shift = max(0, i - (slots - 1))
        rows.append((frames, [0 if j == 0 else j - shift for j in frames], i - shift))
    layer = make_layer(max_positions=slots)
    x = torch.randn(2, f, 16)
    pattern = window_pattern(f, correction=False, num_slots=slots)
    assert pattern.key_pos.max().item() < slots and pattern.query_pos.max().item() == slots - 1
    with torch.no_grad():
        ours = FramePatternAttention(pattern)(layer, x, None)
        ref = naive_attention(layer, x, rows)
    assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "pattern",
    [
        bidirectional_window_pattern(12, 3),
        bidirectional_window_pattern(12, correction=False),
        anchored_sliding_pattern(40, 16),
        window_pattern(16, 4),
    ],
    ids=["bidirectional", "bidirectional-nocorr", "sliding", "window4"],
)
def test_slot_attention_equals_gathered_keys(pattern):
    """The decomposed attention equals the one attention kernel run on explicitly gathered per-slot keys/values
    (query i against its S slots, K = W_k z_src + W_k p_pos)."""
    torch.manual_seed(1)
    n, c, heads = 3, 16, 2
    f, positions = pattern.num_frames, int(pattern.key_pos.max()) + 1
    q, k, v = torch.randn(3, n, f, c).unbind(0)
    pk, pv = torch.randn(2, positions, c).unbind(0)
    index = SlotIndex.of(pattern.src, pattern.key_pos)
    ours = slot_attention(q, k.transpose(1, 2), v.transpose(1, 2), pk, pv, index, heads)  # [n, f, c]
    k_slots = k[:, pattern.src] + pk[pattern.key_pos]  # [n, f, S, c]
    v_slots = v[:, pattern.src] + pv[pattern.key_pos]
    ref = attention(q[:, :, None], k_slots, v_slots, heads)[:, :, 0]  # one query per frame
    assert (ours - ref).abs().max().item() < 1e-5


def test_slot_index_skips_the_position_gather_only_when_slot_m_is_at_position_m():
    """Position correction puts slot m at position m: the position scores are then used as they are (no gather or
    scatter); without correction, or with mirrored positions, the flat position index is kept."""
    assert SlotIndex.of(window_pattern(16, 4).src, window_pattern(16, 4).key_pos).positions is None
    assert (
        SlotIndex.of(anchored_sliding_pattern(40, 16).src, anchored_sliding_pattern(40, 16).key_pos).positions is None
    )
    nocorr = window_pattern(16, 4, correction=False)
    assert SlotIndex.of(nocorr.src, nocorr.key_pos).positions is not None
    mirrored = bidirectional_window_pattern(12, 3)
    index = SlotIndex.of(mirrored.src, mirrored.key_pos)
    assert index.frames.shape == (12 * mirrored.num_slots,)
