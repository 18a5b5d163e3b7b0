"""The SD1.5 denoising UNet, named exactly like the LDM checkpoint (``model.diffusion_model.*``).

Mirrors CompVis ``ldm/modules/diffusionmodules/openaimodel.py`` (``UNetModel``, ``ResBlock``, ``Downsample``,
``Upsample``, ``TimestepEmbedSequential``) and ``ldm/modules/attention.py`` (``SpatialTransformer``,
``BasicTransformerBlock``), restricted to the SD1.x configuration (see ``models/config.py``). Parameterless layers
sit in the slots the checkpoint indexes (``in_layers.1``, ``out_layers.2``, ``ff.net.1``, ...), so loading is a strict
``load_state_dict`` after stripping the prefix.

Video: a 5-D input ``[b, c, f, h, w]`` runs every spatial layer per frame on ``[(b f), c, h, w]``; the AnimateDiff
motion modules (a separate tree, ``models/motion_module.py``, named like its own checkpoint) run at the places listed
in :func:`motion_slots` (AnimateDiff ``animatediff/models/unet_blocks.py``; docs/checkpoints.md §2.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from models.attention import Attention
from models.config import UNetConfig
from models.layers import FeedForward


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """LDM sinusoidal timestep embedding ``[cos | sin]`` (halves, not interleaved), in fp32.

    ``freq_i = exp(-ln(max_period) * i / (dim/2))``; ``timesteps [b]`` -> ``[b, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.to(torch.float32)[:, None] * freqs[None]  # [b, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """LDM ``GroupNorm32``: group norm computed in fp32 and cast back (ResBlocks and the final ``out.0``).

    With ``num_frames``, the input ``[(b f), c, h, w]`` is normalised with statistics shared by all frames of each
    video (AnimateDiff v1's non-inflated GroupNorm applied to ``[b, c, f, h, w]``, docs/checkpoints.md §2.5).
    """

    def forward(self, x: Tensor, num_frames: int | None = None) -> Tensor:
        w, b = self.weight.float(), self.bias.float()
        if num_frames is None:
            return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)
        h = rearrange(x.float(), "(b f) c h w -> b c f h w", f=num_frames)
        h = F.group_norm(h, self.num_groups, w, b, self.eps)  # stats over (c/groups, f, h, w)
        return rearrange(h, "b c f h w -> (b f) c h w").to(x.dtype)


class ResBlock(nn.Module):
    """LDM ``ResBlock``: ``[GN, SiLU, conv] + emb bias -> [GN, SiLU, Dropout, conv]``, plus a skip (1x1 conv when
    the width changes). ``norm_frames`` switches the two GroupNorms to cross-frame statistics (v1)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor, norm_frames: int | None = None) -> Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = conv_in(act_in(norm_in(x, norm_frames)))
        h = h + self.emb_layers(emb)[:, :, None, None]  # per-channel bias from the timestep
        norm_out, act_out, drop, conv_out = self.out_layers
        h = conv_out(drop(act_out(norm_out(h, norm_frames))))
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv, padding 1 (key ``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``size``: the skip connection's spatial size, for latents whose sides are not multiples of 8 (as diffusers'
        ``upsample_size``); otherwise exactly x2."""
        return self.conv(F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest"))


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention ``attn1``, cross-attention ``attn2`` on the text context, GEGLU ``ff``."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6) -> 1x1 conv ``proj_in`` -> tokens ``[b, (h w), c]`` -> one transformer block ->
    1x1 conv ``proj_out`` -> + input. Always per frame."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        h_, w_ = x.shape[-2:]
        h = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")  # [b, (h w), c]
        for block in self.transformer_blocks:
            h = block(h, context)
        # contiguous NCHW: a channels-last view here would make every later conv and norm run channels-last
        h = rearrange(h, "b (h w) c -> b c h w", h=h_, w=w_).contiguous()  # [b, c, h, w]
        return self.proj_out(h) + x


class TimestepEmbedSequential(nn.Sequential):
    """A block of the UNet: routes the timestep embedding to ResBlocks and the context to SpatialTransformers.

    ``temporal = (index, fn)`` runs ``fn`` (a motion module) just before child ``index`` (``len(self)``: at the end).
    """

    def forward(
        self,
        x: Tensor,
        emb: Tensor,
        context: Tensor,
        norm_frames: int | None = None,
        temporal: tuple[int, Callable[[Tensor], Tensor]] | None = None,
        upsample_size: tuple[int, int] | None = None,
    ) -> Tensor:
        for i, layer in enumerate(self):
            if temporal is not None and temporal[0] == i:
                x = temporal[1](x)
            if isinstance(layer, ResBlock):
                x = layer(x, emb, norm_frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        if temporal is not None and temporal[0] == len(self):
            x = temporal[1](x)
        return x


def motion_slots(cfg: UNetConfig) -> dict[str, tuple[str, int]]:
    """Where each AnimateDiff motion module runs: ``motion-module path -> (UNet block, child index it precedes)``.

    Down level i, layer j: at the end of ``input_blocks[3i+j+1]`` (after its ResBlock and SpatialTransformer).
    Mid (v2 only): between ``middle_block.1`` (ST) and ``middle_block.2`` (ResBlock).
    Up level i, layer j: after the ResBlock/ST of ``output_blocks[3i+j]``, before that block's Upsample.
    (Block numbers for SD1.5's two ResBlocks per level. There: down -> input_blocks 1,2,4,5,7,8 at index 2 and 10,11
    at index 1; up_blocks.0 -> output_blocks 0-2 at index 1, before output_blocks.2.1's upsample; up_blocks.1-3 ->
    output_blocks 3-11 at index 2.)
    """
    slots: dict[str, tuple[str, int]] = {}
    levels = len(cfg.channel_mult)
    n = 1
    for level in range(levels):
        content = 2 if level in cfg.attention_levels else 1  # ResBlock (+ SpatialTransformer)
        for j in range(cfg.num_res_blocks):
            slots[f"down_blocks.{level}.motion_modules.{j}"] = (f"input_blocks.{n}", content)
            n += 1
        n += level < levels - 1  # the downsample block
    slots["mid_block.motion_modules.0"] = ("middle_block", 2)
    n = 0
    for i, level in enumerate(reversed(range(levels))):
        content = 2 if level in cfg.attention_levels else 1
        for j in range(cfg.num_res_blocks + 1):
            slots[f"up_blocks.{i}.motion_modules.{j}"] = (f"output_blocks.{n}", content)
            n += 1
    return slots


def motion_module_at(motion: nn.Module, path: str) -> nn.Module | None:
    """The motion module at ``path`` (e.g. ``down_blocks.0.motion_modules.1``), None where the tree has no such slot
    (v1/v3 have no ``mid_block``)."""
    if path.startswith("mid_block.") and motion.mid_block is None:
        return None
    return motion.get_submodule(path)  # an unknown path raises: the slot table and the tree disagree


class UNetModel(nn.Module):
    """SD1.5 UNet (LDM ``UNetModel`` with ``v1-inference.yaml``), built from a :class:`UNetConfig`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch = cfg.block_channels
        mc, emb_dim, groups, heads, ctx = (
            cfg.model_channels,
            cfg.time_embed_dim,
            cfg.norm_groups,
            cfg.num_heads,
            cfg.context_dim,
        )
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res_st(cin: int, cout: int, level: int) -> list[nn.Module]:
            layers: list[nn.Module] = [ResBlock(cin, cout, emb_dim, groups)]
            if level in cfg.attention_levels:
                layers.append(SpatialTransformer(cout, heads, ctx, groups))
            return layers

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skips, cur = [mc], mc
        for level, c in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(TimestepEmbedSequential(*res_st(cur, c, level)))
                cur = c
                skips.append(cur)
            if level < len(ch) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(cur)))
                skips.append(cur)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(cur, cur, emb_dim, groups),
            SpatialTransformer(cur, heads, ctx, groups),
            ResBlock(cur, cur, emb_dim, groups),
        )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for j in range(cfg.num_res_blocks + 1):
                layers = res_st(cur + skips.pop(), ch[level], level)
                cur = ch[level]
                if level > 0 and j == cfg.num_res_blocks:
                    layers.append(Upsample(cur))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(groups, cur), nn.SiLU(), nn.Conv2d(cur, cfg.out_channels, 3, padding=1))
        # UNet block -> (child index, motion-module path); see motion_slots
        self.motion_slots = {block: (index, path) for path, (block, index) in motion_slots(cfg).items()}

    def check_motion(self, motion: nn.Module) -> None:
        """Raise a ValueError if the motion modules' widths do not fit this UNet. (A clip longer than their position
        table is refused by the temporal attention itself, which reads the table.)"""
        mcfg, cfg = motion.config, self.config
        if tuple(mcfg.block_channels) != tuple(cfg.block_channels) or mcfg.layers_per_block != cfg.num_res_blocks:
            raise ValueError(
                f"motion modules (block_channels {tuple(mcfg.block_channels)}, {mcfg.layers_per_block} layers per "
                f"block) do not match the UNet (block_channels {tuple(cfg.block_channels)}, "
                f"{cfg.num_res_blocks} res blocks per level)"
            )

    def forward(self, x: Tensor, timesteps: Tensor | float, context: Tensor, motion: nn.Module | None = None) -> Tensor:
        """Predict the noise.

        x: image latents ``[b, c, h, w]`` or video latents ``[b, c, f, h, w]``; timesteps: scalar or ``[b]``;
        context: text embeddings ``[b, n, d]`` (shared by all frames) or, for video, ``[b, f, n, d]`` (per frame).
        motion: AnimateDiff motion modules, video only. Returns a tensor shaped like ``x``.
        """
        video = x.ndim == 5
        if not video and x.ndim != 4:
            raise ValueError(f"expected a [b, c, h, w] image or [b, c, f, h, w] video, got shape {tuple(x.shape)}")
        b = x.shape[0]
        f = x.shape[2] if video else 1
        if motion is not None:
            if not video:
                raise ValueError("motion modules need a video input [b, c, f, h, w]")
            self.check_motion(motion)
        if video:
            x = rearrange(x, "b c f h w -> (b f) c h w")

        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(b)  # [b]
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype))
        emb = repeat(emb, "b e -> (b f) e", f=f)
        if context.ndim == 4:
            if not video or context.shape[1] != f:
                raise ValueError(f"per-frame context [b, f, n, d] needs a video with f={context.shape[1]} frames")
            context = rearrange(context, "b f n d -> (b f) n d")
        else:
            context = repeat(context, "b n d -> (b f) n d", f=f)

        norm_frames = f if motion is not None and motion.config.cross_frame_resnet_norm else None

        def run(name: str, block: TimestepEmbedSequential, h: Tensor, size: tuple[int, int] | None = None) -> Tensor:
            index, path = self.motion_slots.get(name, (None, None))
            temporal = None
            module = motion_module_at(motion, path) if motion is not None and path is not None else None
            if module is not None:  # the mid-block slot is empty for v1/v3
                temporal = (index, lambda y: module(y, f))
            return block(h, emb, context, norm_frames, temporal, size)

        h = x
        skips = []
        for n, block in enumerate(self.input_blocks):
            h = run(f"input_blocks.{n}", block, h)
            skips.append(h)
        h = run("middle_block", self.middle_block, h)
        for n, block in enumerate(self.output_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            h = run(f"output_blocks.{n}", block, h, tuple(skips[-1].shape[-2:]) if skips else None)

        norm, act, conv = self.out
        out = conv(act(norm(h, norm_frames)))
        return rearrange(out, "(b f) c h w -> b c f h w", f=f) if video else out
