"""AnimateZero's attention processors (paper Sec. 4.1 and 4.2). Each is a small object installed on one
``models.attention.Attention`` layer by :func:`animatezero.hooks.installed`; all of them compute through the one kernel
``models.attention.attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor

from animatezero.windows import FramePattern
from models.attention import Attention, attention, default_processor


@dataclass
class StepState:
    """The sampling step a run is in: the timestep ``t`` being denoised.

    The pipeline's denoiser wrapper calls :meth:`begin` before each UNet evaluation and :meth:`end` after it.
    Processors whose behaviour depends on the step (cached K/V, injection-step ranges, recording) subscribe and do
    their per-step work in ``begin_step(t)`` / ``end_step(t)``, outside the UNet forward: inside it they read only
    tensors and fixed settings, so a compiled UNet is traced once and not again at every step.
    """

    t: int | None = None
    hooks: list = field(default_factory=list, repr=False)

    def subscribe(self, hook) -> None:
        self.hooks.append(hook)

    def begin(self, t: int) -> None:
        self.t = t
        for hook in self.hooks:
            hook.begin_step(t)

    def end(self) -> None:
        for hook in self.hooks:
            hook.end_step(self.t)


@dataclass
class KVBank:
    """Keys/values of the first frame's spatial self-attention recorded during step 1 (paper Sec. 4.1, "latents and
    their features"), keyed by ``(layer name, timestep)``; each entry is ``(k, v)`` of shape ``[branches, n, c]`` where
    branches follow the guidance batch order [uncond, cond]."""

    entries: dict[tuple[str, int], tuple[Tensor, Tensor]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.entries.values())

    def get(self, name: str, t: int) -> tuple[Tensor, Tensor]:
        try:
            return self.entries[(name, t)]
        except KeyError:
            raise KeyError(
                f"no recorded keys/values for layer {name!r} at timestep {t}; record them in text_to_image "
                "(record_kv=True) with the same steps, or use kv_source='current'"
            ) from None


class RecordKV:
    """Default self-attention that also stores this layer's keys/values in a :class:`KVBank` (step 1): the forward
    keeps them, and the end of the step files them under ``(layer, t)``."""

    def __init__(self, name: str, bank: KVBank, state: StepState):
        self.name, self.bank = name, bank
        self.last: tuple[Tensor, Tensor] | None = None
        state.subscribe(self)

    def begin_step(self, t: int) -> None:
        self.last = None  # nothing left from a step that raised before its end

    def end_step(self, t: int) -> None:
        if self.last is not None:  # copied: the outputs of a CUDA-graph replay are overwritten by the next replay
            self.bank.entries[(self.name, t)] = tuple(kv.clone() for kv in self.last)
            self.last = None

    def __call__(self, attn: Attention, x: Tensor, context: Tensor | None) -> Tensor:
        k, v = attn.to_k(x), attn.to_v(x)  # [b, n, c]
        self.last = (k.detach(), v.detach())
        return attn.to_out(attention(attn.to_q(x), k, v, attn.heads))


@dataclass(frozen=True, eq=False)  # compared by identity: it holds tensors
class Anchor:
    """A video frame that reproduces a step-1 image (paper Sec. 4.1): its index in the clip, the keys/values recorded
    in step 1 for its image (``bank``; None: other frames share this frame's keys/values from the current pass), and
    the image's latents that are inserted (``trajectory``: the latent entering each sampling step, then z_0; in
    lockstep it grows step by step). The K/V processors read ``frame`` and ``bank`` only."""

    frame: int
    bank: KVBank | None = None
    trajectory: Sequence[Tensor] = ()


class SharedFirstFrameKV:
    """Spatial appearance control, key/value sharing (paper Sec. 4.1): every frame's spatial self-attention uses the
    first frame's keys and values, ``Attn(Q_j, K_1, V_1)`` (``mode="replace"``) or ``Attn(Q_j, [K_1; K_j], [V_1; V_j])``
    (``mode="concat"``). With a bank, K_1 and V_1 are the ones recorded in step 1 at this layer and step; otherwise
    they come from frame 0 of the current pass. Outside ``active_timesteps`` (if given) the layer behaves as usual.

    Several anchors (loops, interpolation; our extension) are shared together: frame j attends to the union of the
    anchors' tokens with anchor a's tokens weighted by ``weights[j, a]`` (an additive ``log w`` bias, so a weight of 0
    hides the anchor and frame ``anchor.frame`` sees only its own anchor when its weight row is one-hot).

    Input tokens are ``[(b f), n, c]`` with frames innermost, as the UNet lays out a video batch. ``weights`` must be
    on the UNet's device (the forward only casts them to the activations' dtype).
    """

    def __init__(
        self,
        name: str,
        num_frames: int,
        *,
        mode: str = "replace",
        anchors: tuple[Anchor, ...] = (Anchor(0),),
        weights: Tensor | None = None,
        state: StepState | None = None,
        active_timesteps: frozenset[int] | None = None,
    ):
        if mode not in ("replace", "concat"):
            raise ValueError(f"K/V sharing mode must be 'replace' or 'concat', got {mode!r}")
        if (any(a.bank is not None for a in anchors) or active_timesteps is not None) and state is None:
            raise ValueError("cached K/V or a step range needs the run's StepState")
        if len(anchors) > 1 and (weights is None or tuple(weights.shape) != (num_frames, len(anchors))):
            raise ValueError(f"{len(anchors)} anchors need a weights tensor of shape [{num_frames}, {len(anchors)}]")
        self.name, self.num_frames, self.mode = name, num_frames, mode
        self.anchors, self.active_timesteps = anchors, active_timesteps
        self.log_weights = weights.log() if weights is not None else None  # [f, A]
        self.active = True  # this step shares keys/values
        self.recorded: tuple[tuple[Tensor, Tensor] | None, ...] = (None,) * len(anchors)  # this step's cached K/V
        if state is not None:
            state.subscribe(self)

    def begin_step(self, t: int) -> None:
        """Look up this step's recorded keys/values and whether the step is in the sharing range."""
        self.active = self.active_timesteps is None or t in self.active_timesteps
        self.recorded = tuple(None if a.bank is None else a.bank.get(self.name, t) for a in self.anchors)

    def end_step(self, t: int) -> None:
        self.recorded = (None,) * len(self.anchors)

    def _anchor_kv(self, attn: Attention, x: Tensor, anchor: Anchor, recorded) -> tuple[Tensor, Tensor]:
        if recorded is None:
            return attn.to_k(x[:, anchor.frame]), attn.to_v(x[:, anchor.frame])  # [b, n, c]
        k, v = recorded
        if k.shape[0] != x.shape[0]:
            raise ValueError(
                f"recorded K/V have {k.shape[0]} guidance branches, this pass has {x.shape[0]}: use the same "
                "guidance scale (1 vs not 1) in text_to_image and animate"
            )
        return k, v

    def __call__(self, attn: Attention, x: Tensor, context: Tensor | None) -> Tensor:
        if not self.active:
            return default_processor(attn, x, context)
        x = rearrange(x, "(b f) n c -> b f n c", f=self.num_frames)
        kv = [self._anchor_kv(attn, x, a, r) for a, r in zip(self.anchors, self.recorded)]
        q = attn.to_q(x)  # [b, f, n, c]
        if self.mode == "replace" and len(kv) == 1:  # all frames' queries against one key set: one call per branch
            out = attention(rearrange(q, "b f n c -> b (f n) c"), *kv[0], attn.heads)  # [b, f*n, c]
            return attn.to_out(rearrange(out, "b (f n) c -> (b f) n c", f=self.num_frames))
        b, f, n, _ = q.shape
        k = torch.cat([k for k, _ in kv], dim=1)[:, None].expand(b, f, -1, -1)  # [b, f, A*n, c]
        v = torch.cat([v for _, v in kv], dim=1)[:, None].expand(b, f, -1, -1)
        bias = None
        if self.log_weights is not None:
            # log_weights live on the UNet's device (made there by the caller): no host-to-device copy per call
            bias = self.log_weights.to(q.dtype).repeat_interleave(n, dim=1)  # [f, A*n]
        if self.mode == "concat":
            k, v = torch.cat([k, attn.to_k(x)], dim=2), torch.cat([v, attn.to_v(x)], dim=2)  # [b, f, (A+1)*n, c]
            if bias is not None:
                bias = torch.cat([bias, bias.new_zeros(f, n)], dim=1)
        mask = bias[:, None, None, :] if bias is not None else None  # [f, 1, 1, keys] over [b, f, heads, n, keys]
        return attn.to_out(rearrange(attention(q, k, v, attn.heads, mask=mask), "b f n c -> (b f) n c"))


class SlotIndex(NamedTuple):
    """A :class:`~animatezero.windows.FramePattern`'s slots as flat indices, made once per pattern (on the CPU, so no
    per-call work or device sync). ``frames [f*S]``: slot ``(i, m)`` -> entry ``i*f + src[i, m]`` of the ``[f, f]``
    content scores; ``positions [f*S]``: -> entry ``i*P + key_pos[i, m]`` of the ``[f, P]`` position scores, or None
    when every row's key positions are ``0..S-1`` (position correction: slot m sits at position m, so the position
    scores are the slot scores and need no gather or scatter)."""

    num_frames: int
    num_slots: int
    num_positions: int
    frames: Tensor
    positions: Tensor | None

    @classmethod
    def of(cls, src: Tensor, key_pos: Tensor, num_positions: int | None = None) -> SlotIndex:
        f, s = src.shape
        p = int(key_pos.max()) + 1 if num_positions is None else num_positions
        rows = torch.arange(f, device=src.device)[:, None]
        frames = (rows * f + src).flatten()  # [f*S]
        identity = p == s and bool((key_pos == torch.arange(s, device=key_pos.device)).all())
        return cls(f, s, p, frames, None if identity else (rows * p + key_pos).flatten())

    def to(self, device: torch.device | str) -> SlotIndex:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return self._replace(frames=move(self.frames), positions=move(self.positions))


def slot_attention(
    q: Tensor, k_frames_t: Tensor, v_frames_t: Tensor, k_pos: Tensor, v_pos: Tensor, index: SlotIndex, heads: int
) -> Tensor:
    """Attention of each query frame over its own key slots, where slot ``m`` of query ``i`` holds frame ``src[i, m]``
    at position ``key_pos[i, m]`` and its key/value are sums ``K_frame + K_position`` (``W(z + p) = W z + W p``).

    Exactly ``models.attention.attention`` (scale ``head_dim ** -0.5``, softmax over keys) applied per query frame to
    its ``S`` slots, copies included, but without building the per-slot keys: since
    ``<q_i, K_a + P_p> = <q_i, K_a> + <q_i, P_p>``, the slot logits are a content score over the ``f`` distinct frames
    plus a position score over the ``P`` positions, picked per slot (an ``index_select`` of scores, not of keys). The
    slot weights are then summed back per frame and per position (``index_add_``) and applied to ``V`` and ``V_pos``.
    Logits and softmax are in fp32 (as SDPA's kernels accumulate), the result in ``q``'s dtype.

    q: ``[N, f, c]``; k_frames_t, v_frames_t: the frames' keys and values *transposed*, ``[N, c, f]`` (as
    ``W @ x^T`` produces them: the score and value matmuls read them without a layout copy); k_pos, v_pos: ``[P, c]``;
    ``index``: the pattern's :class:`SlotIndex` on ``q``'s device. Returns ``[N, f, c]``.
    """
    f, s, p = index.num_frames, index.num_slots, index.num_positions
    n, _, c = q.shape
    d = c // heads
    qh = rearrange(q, "n f (h d) -> (n h) f d", h=heads)  # [N*h, f, d]: the one full-size layout copy
    kt, vt = (rearrange(t, "n (h d) f -> (n h) d f", h=heads) for t in (k_frames_t, v_frames_t))  # [N*h, d, f] views
    pk = rearrange(k_pos[:p], "p (h d) -> h d p", h=heads).contiguous()  # [h, d, P]
    pv = rearrange(v_pos[:p], "p (h d) -> h p d", h=heads).contiguous()  # [h, P, d]
    content = torch.bmm(qh, kt).float().view(n, heads, f * f)  # [N, h, f(query) * f(key frame)]
    # position scores per head, from q's own layout (a strided batch, no copy of q): [h, N*f, P]
    position = torch.bmm(q.reshape(n * f, heads, d).transpose(0, 1), pk).float()
    position = position.view(heads, n, f, p).permute(1, 0, 2, 3)  # [N, h, f, P] (a view)
    logits = content.index_select(-1, index.frames).view(n, heads, f, s)  # [N, h, f, S]
    if index.positions is None:
        logits += position  # slot m is at position m
    else:
        logits += position.reshape(n, heads, f * p).index_select(-1, index.positions).view(n, heads, f, s)
    weights = (logits * d**-0.5).softmax(dim=-1)  # [N, h, f, S]
    # sum the slot weights per key frame and per position (copies of a frame add up), then apply them
    flat = weights.view(n, heads, f * s)
    w_frames = content.new_zeros(n, heads, f * f).index_add_(-1, index.frames, flat)  # [N, h, f*f]
    if index.positions is None:
        w_pos = weights  # [N, h, f, P]
    else:
        w_pos = content.new_zeros(n, heads, f * p).index_add_(-1, index.positions, flat).view(n, heads, f, p)
    frames_out = torch.bmm(w_frames.view(n * heads, f, f).to(vt.dtype), vt.transpose(1, 2))  # [N*h, f, d]
    pos_out = torch.bmm(rearrange(w_pos, "n h f p -> h (n f) p").to(pv.dtype), pv)  # [h, N*f, d]
    out = q.new_empty(n, f, heads, d)  # the sum lands directly in the layout to_out reads
    torch.add(
        rearrange(frames_out, "(n h) f d -> n f h d", h=heads),
        rearrange(pos_out, "h (n f) d -> n f h d", n=n),
        out=out,
    )
    return out.view(n, f, c)


class FramePatternAttention:
    """Temporal consistency control (paper Sec. 4.2): the motion module's temporal self-attention restricted to a
    :class:`~animatezero.windows.FramePattern` (positional-corrected window attention, or an anchored sliding window for
    long clips). Input tokens are ``[N, f, c]`` (one sequence of frames per spatial location), without positions.

    Since ``to_q``/``to_k``/``to_v`` have no bias, ``W(z + p) = W z + W p``: queries, keys and values are projected
    once per frame and once per position, and :func:`slot_attention` combines them per slot without gathering keys or
    values.
    """

    def __init__(self, pattern: FramePattern, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """``device``: where the UNet runs; the index tensors are made there once (``dtype`` is accepted for the
        callers' symmetry; the pattern holds only indices)."""
        self.num_frames = pattern.num_frames
        self.num_positions = int(max(pattern.key_pos.max(), pattern.query_pos.max())) + 1  # table rows used
        self.index = SlotIndex.of(pattern.src, pattern.key_pos, self.num_positions).to(device)
        self.query_pos = pattern.query_pos.to(device)

    def __call__(self, attn: Attention, x: Tensor, context: Tensor | None) -> Tensor:
        if x.shape[1] != self.num_frames:
            raise ValueError(f"pattern made for {self.num_frames} frames, got {x.shape[1]}")
        attn.pos_encoder.check(self.num_positions)
        if self.query_pos.device != x.device:  # a processor made for another device: move once, not at every call
            self.query_pos, self.index = self.query_pos.to(x.device), self.index.to(x.device)
        pe = attn.pos_encoder.pe[0, : self.num_positions].to(x.dtype)  # [P, c]
        p_q, p_k, p_v = attn.to_q(pe), attn.to_k(pe), attn.to_v(pe)  # [P, c]: W(z + p) = W z + W p (no bias)
        q = attn.to_q(x).add_(p_q[self.query_pos])  # [N, f, c] (no [N, f, c] temporary for x + p)
        x_t = x.transpose(1, 2)  # [N, c, f] (a view)
        k_t, v_t = attn.to_k.weight @ x_t, attn.to_v.weight @ x_t  # [N, c, f]: to_k/to_v have no bias
        out = slot_attention(q, k_t, v_t, p_k, p_v, self.index, attn.heads)
        return attn.to_out(out)
