"""Model configs inferred from checkpoint tensor shapes, so tiny test files and real files take the same path.

Only widths and depths are read from the shapes; head counts and GroupNorm groups keep SD1.5's and AnimateDiff's
fixed values (docs/checkpoints.md §1-2 list the shapes these functions read).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig
from models.families import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, context_dim, shape_of
from models.readers import CheckpointError, KeyMismatchError


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.match(k))})


def infer_unet_config(u: Mapping[str, Any]) -> UNetConfig:
    """UNet widths from LDM keys without the ``model.diffusion_model.`` prefix (heads and groups keep SD1.5's 8/32)."""
    try:
        mc, cin = shape_of(u["input_blocks.0.0.weight"])[:2]
        n_in = len(_indices(u, r"input_blocks\.(\d+)\."))
        ops = _indices(u, r"input_blocks\.(\d+)\.0\.op\.weight")
        levels = len(ops) + 1
        nrb, rem = divmod(n_in - 1 - len(ops), levels)
        if rem or nrb < 1:
            raise CheckpointError(f"{n_in} input blocks with {len(ops)} downsamplers do not form a UNet")
        mult, attn = [], []
        for level in range(levels):
            n = 1 + level * (nrb + 1)
            c = shape_of(u.get(f"input_blocks.{n}.0.out_layers.3.weight", u[f"input_blocks.{n}.0.in_layers.2.weight"]))[
                0
            ]
            if c % mc:
                raise CheckpointError(f"level {level} width {c} is not a multiple of model_channels {mc}")
            mult.append(c // mc)
            if f"input_blocks.{n}.1.norm.weight" in u:
                attn.append(level)
        return UNetConfig(
            model_channels=mc,
            channel_mult=tuple(mult),
            num_res_blocks=nrb,
            attention_levels=tuple(attn),
            context_dim=context_dim(u, "") or UNetConfig().context_dim,
            in_channels=cin,
            out_channels=shape_of(u.get("out.2.weight", (cin,)))[0],  # if missing, the strict load reports it
        )
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the UNet architecture: key {UNET_PREFIX}{e.args[0]} is missing") from None


def infer_vae_config(v: Mapping[str, Any]) -> VAEConfig:
    """VAE widths from LDM keys without the ``first_stage_model.`` prefix."""
    try:
        ch, cin = shape_of(v["encoder.conv_in.weight"])[:2]
        levels = _indices(v, r"encoder\.down\.(\d+)\.")
        nrb = len(_indices(v, r"encoder\.down\.0\.block\.(\d+)\."))
        mult = tuple(shape_of(v[f"encoder.down.{i}.block.0.conv1.weight"])[0] // ch for i in levels)
        return VAEConfig(
            ch=ch,
            ch_mult=mult,
            num_res_blocks=nrb,
            z_channels=shape_of(v["decoder.conv_in.weight"])[1],
            in_channels=cin,
        )
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the VAE architecture: key {VAE_PREFIX}{e.args[0]} is missing") from None


def infer_clip_config(c: Mapping[str, Any]) -> CLIPTextConfig:
    """Text-encoder widths from HF keys ``text_model.*``; heads = width // 64 (head_dim 64 as in every CLIP)."""
    try:
        vocab, width = shape_of(c["text_model.embeddings.token_embedding.weight"])
        return CLIPTextConfig(
            vocab_size=vocab,
            max_positions=shape_of(c["text_model.embeddings.position_embedding.weight"])[0],
            width=width,
            layers=len(_indices(c, r"text_model\.encoder\.layers\.(\d+)\.")),
            heads=max(1, width // 64),
            mlp_dim=shape_of(c["text_model.encoder.layers.0.mlp.fc1.weight"])[0],
        )
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the text encoder: key {CLIP_PREFIX}{e.args[0]} is missing") from None


def infer_motion_config(m: Mapping[str, Any], version: int, max_positions: int) -> MotionConfig:
    """Motion-module widths from keys ``{down,mid,up}_blocks.*`` (heads and groups keep AnimateDiff's 8/32)."""
    try:
        levels = _indices(m, r"down_blocks\.(\d+)\.")
        ch = tuple(shape_of(m[f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight"])[0] for i in levels)
        layers = len(_indices(m, r"down_blocks\.0\.motion_modules\.(\d+)\."))
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the motion-module widths: key {e.args[0]} is missing") from None
    if not ch:
        raise KeyMismatchError("the motion module has no down_blocks.*.motion_modules.* keys")
    return MotionConfig(version=version, block_channels=ch, layers_per_block=layers, max_positions=max_positions)
