"""The one attention kernel and the attention layer every network in ``models/`` uses.

Every attention in SD1.5 (spatial self/cross attention), the VAE mid-block and the AnimateDiff motion modules
goes through :func:`attention`. Layers own their weights (``to_q/to_k/to_v/to_out`` as in the checkpoints) and
delegate their body to a *processor*: a callable ``processor(layer, x, context) -> Tensor``. The default processor
is the plain computation; other behaviour (e.g. sharing keys/values across frames) is a different processor object
installed on the layer from outside, never a flag inside the model.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """Multi-head scaled dot-product attention, scale ``head_dim ** -0.5``, softmax over keys.

    q: ``[..., n_q, c]``; k, v: ``[..., n_k, c]`` (leading dims broadcast like SDPA's batch dims); ``mask`` is a
    boolean (True = attend) or additive mask broadcastable to ``[..., heads, n_q, n_k]``. Returns ``[..., n_q, c]``.
    """
    q, k, v = (rearrange(t, "... n (h d) -> ... h n d", h=heads) for t in (q, k, v))  # [..., h, n, d]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "... h n d -> ... n (h d)")  # [..., n_q, c]


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """AnimateDiff's interleaved table: ``pe[p, 2k] = sin(p * w_k)``, ``pe[p, 2k+1] = cos(p * w_k)``,
    ``w_k = exp(-2k ln(10000) / dim)``, computed in fp32. ``positions``: integer tensor ``[...]`` -> ``[..., dim]``."""
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32)[..., None] * div  # [..., dim/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # [..., dim] interleaved sin/cos


class PositionalEncoding(nn.Module):
    """Sinusoidal frame positions of a motion-module attention block (checkpoint key ``pos_encoder.pe``).

    ``pe`` is recomputed from the formula and not persistent: the official loader also ignores the stored copy, which
    equals the formula (our loader checks that before dropping it). A module built on the meta device gets a meta
    table; :meth:`reset_buffers` computes the real one where the weights land.
    """

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.register_buffer("pe", self.table(dim, max_positions), persistent=False)  # [1, L, dim]

    @staticmethod
    def table(dim: int, max_positions: int, device: torch.device | str | None = None) -> Tensor:
        """The ``[1, max_positions, dim]`` table, computed on the CPU (a small table; on the meta device the same ops
        would run slow Python decompositions) and placed on ``device`` (default: the current default device)."""
        pe = sinusoidal_positions(torch.arange(max_positions, device="cpu"), dim)[None]
        return pe.to(torch.get_default_device() if device is None else device)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute ``pe`` on ``device`` (after the module was built on the meta device)."""
        self.pe = self.table(self.pe.shape[-1], self.max_positions, device)

    def check(self, num_positions: int) -> None:
        """Raise a clear error if positions ``0..num_positions-1`` do not fit the table (a Python-int check, so it
        neither synchronises a GPU nor breaks a compiled graph)."""
        if num_positions > self.max_positions:
            raise ValueError(
                f"frame position {num_positions - 1} is beyond this motion module's {self.max_positions} positions; "
                f"use at most {self.max_positions} frames per pass"
            )

    def forward(self, positions: Tensor) -> Tensor:
        """Embeddings of the given 0-based positions ``[...]`` -> ``[..., dim]`` (callers :meth:`check` the range)."""
        return self.pe[0, positions]


class AttentionProcessor(Protocol):
    """What a processor is: given the layer (for its weights), the input tokens ``x [..., n, c]`` and an optional
    ``context [..., m, c_ctx]`` (None for self-attention), return the layer's output ``[..., n, c]``."""

    def __call__(self, attn: Attention, x: Tensor, context: Tensor | None) -> Tensor: ...


def default_processor(attn: Attention, x: Tensor, context: Tensor | None) -> Tensor:
    """The unmodified computation. For a layer with a ``pos_encoder`` (temporal attention, tokens ``[N, f, c]``),
    frame j's embedding is added to the input before the q/k/v projections, as AnimateDiff does."""
    if attn.pos_encoder is not None:
        attn.pos_encoder.check(x.shape[-2])
        x = x + attn.pos_encoder.pe[0, : x.shape[-2]].to(x.dtype)  # [N, f, c]
    ctx = x if context is None else context
    return attn.to_out(attention(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), attn.heads))


class Attention(nn.Module):
    """Multi-head attention with the SD/AnimateDiff key names: ``to_q``, ``to_k``, ``to_v`` (no bias) and
    ``to_out.0`` (bias; ``to_out.1`` is the dropout slot the checkpoint index skips).

    ``processor`` is None for the default computation; assign any :class:`AttentionProcessor` to change it.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, max_positions: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))
        self.pos_encoder = PositionalEncoding(dim, max_positions) if max_positions else None
        self.processor: AttentionProcessor | None = None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return (self.processor or default_processor)(self, x, context)
