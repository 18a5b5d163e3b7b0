"""AnimateDiff SD1.5 motion modules (v1, v2, v3), named exactly like the motion-module checkpoints.

Mirrors guoyww/AnimateDiff ``animatediff/models/motion_module.py`` (``VanillaTemporalModule`` ->
``TemporalTransformer3DModel`` -> ``TemporalTransformerBlock`` -> ``VersatileAttention``) on the SD1.5 main branch.
The tree (:class:`MotionModules`: ``down_blocks.{i}`` / ``mid_block`` (v2) / ``up_blocks.{i}`` -> ``motion_modules.{j}``)
is separate from the LDM-named UNet; ``models.unet.motion_slots`` says where each module runs.
Computation: docs/checkpoints.md §2.3. Key names: §2.2. MotionLoRA: §2.6.
"""

from __future__ import annotations

import re

import torch
from einops import rearrange
from torch import Tensor, nn

from models.attention import Attention
from models.config import MotionConfig
from models.layers import FeedForward


class TemporalTransformerBlock(nn.Module):
    """Two temporal self-attentions (``attention_blocks.{0,1}`` with pre-LN ``norms.{0,1}``), then a GEGLU ``ff``.

    Each attention runs over the frame axis of every pixel: tokens ``[(b f), d, c]`` -> ``[(b d), f, c]``; the layer's
    default processor adds the sinusoidal frame positions before q/k/v (AnimateDiff ``VersatileAttention``).
    """

    def __init__(self, dim: int, heads: int, max_positions: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList([Attention(dim, heads, max_positions=max_positions) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        d = x.shape[1]
        for attn, norm in zip(self.attention_blocks, self.norms):
            y = rearrange(norm(x), "(b f) d c -> (b d) f c", f=num_frames)
            y = attn(y)  # [(b d), f, c]
            x = rearrange(y, "(b d) f c -> (b f) d c", d=d) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    """Per-frame GroupNorm (eps 1e-6) -> Linear ``proj_in`` -> one block -> Linear ``proj_out`` -> + input."""

    def __init__(self, dim: int, heads: int, max_positions: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(dim, heads, max_positions)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        h_, w_ = x.shape[-2:]
        t = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))  # [(b f), d, c]
        for block in self.transformer_blocks:
            t = block(t, num_frames)
        # contiguous NCHW, so the residual sum (and everything after it) does not run channels-last
        t = rearrange(self.proj_out(t), "n (h w) c -> n c h w", h=h_, w=w_).contiguous()  # [(b f), c, h, w]
        return t + x


class VanillaTemporalModule(nn.Module):
    """One motion module: ``x + f(x)`` on ``[(b f), c, h, w]`` (no timestep or text input)."""

    def __init__(self, dim: int, heads: int, max_positions: int, groups: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(dim, heads, max_positions, groups)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        """x: ``[(b f), c, h, w]`` with frames of each video contiguous -> same shape."""
        if x.shape[0] % num_frames:
            raise ValueError(f"batch of {x.shape[0]} frames is not a multiple of num_frames={num_frames}")
        return self.temporal_transformer(x, num_frames)


class MotionBlock(nn.Module):
    """The ``motion_modules`` list of one UNet level (down/up) or of the middle block."""

    def __init__(self, dim: int, count: int, cfg: MotionConfig):
        super().__init__()
        self.motion_modules = nn.ModuleList(
            [VanillaTemporalModule(dim, cfg.num_heads, cfg.max_positions, cfg.norm_groups) for _ in range(count)]
        )


class MotionModules(nn.Module):
    """All motion modules of one AnimateDiff checkpoint: ``down_blocks``, ``mid_block`` (v2 only), ``up_blocks``."""

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        self.config = cfg
        ch = cfg.block_channels
        self.down_blocks = nn.ModuleList([MotionBlock(c, cfg.layers_per_block, cfg) for c in ch])
        self.mid_block = MotionBlock(ch[-1], 1, cfg) if cfg.mid_block else None
        self.up_blocks = nn.ModuleList([MotionBlock(c, cfg.layers_per_block + 1, cfg) for c in reversed(ch)])


_LORA_KEY = re.compile(
    r"(?P<block>.+\.temporal_transformer\.transformer_blocks\.\d+\.attention_blocks\.\d+\.)"
    r"processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<side>down|up)\.weight"
)


def parse_motion_lora_key(key: str) -> tuple[str, str] | None:
    """``(target weight name, "down" | "up")`` for a MotionLoRA key, None if ``key`` is not one. ``to_out`` targets
    the ``to_out.0`` linear layer (the one MotionLoRA key parser; the loader and :func:`merge_motion_lora` share it)."""
    m = _LORA_KEY.fullmatch(key)
    if m is None:
        return None
    return m["block"] + ("to_out.0" if m["proj"] == "to_out" else m["proj"]) + ".weight", m["side"]


@torch.no_grad()
def merge_motion_lora(motion: MotionModules, lora_sd: dict[str, Tensor], alpha: float = 1.0) -> list[str]:
    """Merge an AnimateDiff MotionLoRA into ``motion`` in place: ``W += alpha * up @ down`` (in fp32).

    Keys: ``<module>.temporal_transformer.transformer_blocks.0.attention_blocks.{a}.processor.{to_q,to_k,to_v,
    to_out}_lora.{down,up}.weight`` with down ``[r, in]`` and up ``[out, r]``; ``to_out`` targets ``to_out.0``.
    No rank/alpha rescaling (AnimateDiff ``convert_motion_lora_ckpt_to_diffusers``; docs/checkpoints.md §2.6).
    Everything is validated before any weight changes. Returns the names of the merged weights.
    """
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in lora_sd.items():
        parsed = parse_motion_lora_key(key)
        if parsed is None:
            raise ValueError(f"not a MotionLoRA key: {key!r}")
        target, side = parsed
        pairs.setdefault(target, {})[side] = value

    params = dict(motion.named_parameters())
    for target, pair in pairs.items():
        if set(pair) != {"down", "up"}:
            raise ValueError(f"MotionLoRA for {target} lacks its {({'down', 'up'} - set(pair)).pop()} matrix")
        if target not in params:
            where = "no mid block (v1/v3)" if target.startswith("mid_block.") else "no such module"
            raise ValueError(
                f"MotionLoRA targets {target}, but these v{motion.config.version} motion modules have {where}"
            )
        down, up, weight = pair["down"], pair["up"], params[target]
        if (
            down.ndim != 2
            or up.ndim != 2
            or up.shape[1] != down.shape[0]
            or (up.shape[0], down.shape[1]) != weight.shape
        ):
            raise ValueError(
                f"MotionLoRA for {target}: up {tuple(up.shape)} @ down {tuple(down.shape)} does not give the "
                f"weight's shape {tuple(weight.shape)}"
            )

    for target, pair in pairs.items():
        weight = params[target]
        delta = pair["up"].to(weight.device, torch.float32) @ pair["down"].to(weight.device, torch.float32)
        weight.copy_((weight.float() + alpha * delta).to(weight.dtype))
    return sorted(pairs)
