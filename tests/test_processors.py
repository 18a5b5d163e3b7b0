"""Spatial appearance control processors (paper Sec. 4.1) and the install/restore mechanism, on standalone layers."""

import math

import pytest
import torch
from torch import nn

from animatezero.controls import Controls, steps_in_range
from animatezero.hooks import installed
from animatezero.processors import Anchor, KVBank, RecordKV, SharedFirstFrameKV, StepState
from models.attention import Attention


@pytest.fixture
def layer():
    torch.manual_seed(0)
    attn = Attention(16, heads=2)
    for p in attn.parameters():
        nn.init.normal_(p, std=0.3)
    return attn


def naive(layer, q_tokens, kv_tokens):
    """Attention of q_tokens [n, c] over kv_tokens [m, c], per head, from the definition."""
    q, k, v = layer.to_q(q_tokens), layer.to_k(kv_tokens), layer.to_v(kv_tokens)
    h, d = layer.heads, q.shape[-1] // layer.heads
    out = torch.cat(
        [
            ((q[:, i * d : (i + 1) * d] @ k[:, i * d : (i + 1) * d].T) / math.sqrt(d)).softmax(-1)
            @ v[:, i * d : (i + 1) * d]
            for i in range(h)
        ],
        -1,
    )
    return layer.to_out(out)


@pytest.mark.parametrize("mode", ["replace", "concat"])
def test_shared_kv_current_equals_naive(layer, mode):
    b, f, n = 2, 4, 5
    x = torch.randn(b * f, n, 16)
    with torch.no_grad():
        out = SharedFirstFrameKV("l", f, mode=mode)(layer, x, None)
        frames = x.view(b, f, n, 16)
        for bi in range(b):
            for j in range(f):
                kv = frames[bi, 0] if mode == "replace" else torch.cat([frames[bi, 0], frames[bi, j]])
                ref = naive(layer, frames[bi, j], kv)
                assert (out[bi * f + j] - ref).abs().max().item() < 1e-5
        # frame 0 is unchanged by sharing: it attends to its own keys either way
        assert (out.view(b, f, n, 16)[:, 0] - layer(frames[:, 0])).abs().max().item() < 1e-5


def test_cached_kv_uses_recorded_step(layer):
    bank, state = KVBank(), StepState()
    image_tokens = {t: torch.randn(2, 5, 16) for t in (901, 801)}
    with torch.no_grad():
        recorder = RecordKV("l", bank, state)
        for t, tokens in image_tokens.items():
            state.begin(t)
            plain = layer(tokens)
            recorded = recorder(layer, tokens, None)
            assert torch.allclose(recorded, plain)  # recording does not change the output
            assert (("l", t) in bank.entries) is False  # filed at the end of the step
            state.end()
        assert bank.nbytes == 2 * 2 * (2 * 5 * 16 * 4)
        x = torch.randn(2 * 3, 5, 16)
        state.hooks.clear()  # the recorder's run is over
        share = SharedFirstFrameKV("l", 3, anchors=(Anchor(0, bank),), state=state)
        state.begin(901)
        out = share(layer, x, None).view(2, 3, 5, 16)
        ref = naive(layer, x.view(2, 3, 5, 16)[1, 2], image_tokens[901][1])
        assert (out[1, 2] - ref).abs().max().item() < 1e-5
        state.end()
        with pytest.raises(KeyError, match="no recorded keys/values"):
            state.begin(1)


def test_step_range_switches_sharing(layer):
    state = StepState()
    share = SharedFirstFrameKV("l", 2, state=state, active_timesteps=frozenset({901}))
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        state.begin(901)
        on = share(layer, x, None)
        state.begin(801)
        off = share(layer, x, None)
    assert torch.allclose(off, layer(x))
    assert not torch.allclose(on, off)


def test_steps_in_range():
    ts = [961, 921, 881, 841]
    assert steps_in_range(ts, (0.0, 1.0)) == frozenset(ts)
    assert steps_in_range(ts, (0.0, 0.5)) == frozenset({961, 921})
    assert steps_in_range(ts, (0.5, 1.0)) == frozenset({881, 841})


def test_installed_restores_even_on_error(layer):
    model = nn.Module()
    model.attn = layer
    sentinel = object()
    layer.processor = None
    with pytest.raises(RuntimeError):
        with installed(model, {"attn": sentinel}):
            assert model.attn.processor is sentinel
            raise RuntimeError("boom")
    assert model.attn.processor is None
    with pytest.raises(TypeError, match="not an attention layer"):
        with installed(model, {"attn.to_q": sentinel}):
            pass


def test_controls_presets_and_validation():
    assert Controls.paper().any and not Controls.animatediff().any
    rows = [Controls.ablation(i) for i in range(1, 6)]
    assert [r.insert_latent for r in rows] == [False, True, True, True, True]
    assert [r.share_kv for r in rows] == [False, False, True, True, True]
    assert [r.window_attention for r in rows] == [False, False, False, True, True]
    assert [r.position_correction for r in rows[3:]] == [False, True]
    assert Controls.preset("ablation4", window_size=4).window_size == 4
    with pytest.raises(ValueError, match="unknown controls preset"):
        Controls.preset("nope")
    with pytest.raises(ValueError, match="kv_mode"):
        Controls(kv_mode="add")
    with pytest.raises(ValueError, match="unknown UNet blocks"):
        Controls(window_blocks=("encoder",))
