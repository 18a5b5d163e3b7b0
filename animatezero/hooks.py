"""Finding attention layers by module path and installing processors on them for the duration of a ``with`` block.

The networks are never patched: a processor is an object assigned to an ``Attention`` layer's ``processor`` slot, and
:func:`installed` puts the previous ones back when the block exits, even on error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from models.attention import Attention, AttentionProcessor


@dataclass(frozen=True)
class LayerInfo:
    """Where an attention layer sits: ``block`` is "down", "mid" or "up"; ``level`` the resolution level (0 = full latent
    resolution, each level down halves it; the mid block is at the deepest level, 3 in SD1.5)."""

    block: str
    level: int


def spatial_self_attention_layers(unet: nn.Module) -> dict[str, LayerInfo]:
    """The SD UNet's spatial self-attention layers (``...transformer_blocks.0.attn1``), in forward order.

    Levels follow the UNet's config: each level holds ``num_res_blocks`` input blocks plus a downsample block
    (``input_blocks.0`` is the stem conv) and ``num_res_blocks + 1`` output blocks, deepest level first."""
    per_level = unet.config.num_res_blocks + 1
    deepest = len(unet.config.channel_mult) - 1
    layers = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, Attention) and name.endswith(".attn1")):
            continue
        kind, index = re.match(r"(input_blocks|middle_block|output_blocks)\.?(\d*)", name).groups()
        if kind == "input_blocks":
            layers[name] = LayerInfo("down", (int(index) - 1) // per_level)
        elif kind == "middle_block":
            layers[name] = LayerInfo("mid", deepest)
        else:
            layers[name] = LayerInfo("up", deepest - int(index) // per_level)
    return layers


def temporal_attention_layers(motion: nn.Module) -> dict[str, LayerInfo]:
    """The motion modules' temporal self-attention layers (``...attention_blocks.{a}``): ``down_blocks.{i}`` is level
    i, ``up_blocks.{i}`` the i-th level from the deepest, as in the UNet the modules run in."""
    deepest = len(motion.config.block_channels) - 1
    layers = {}
    for name, module in motion.named_modules():
        if not isinstance(module, Attention):
            continue
        block, level = re.match(r"(down|mid|up)_blocks?\.?(\d*)", name).groups()
        if block == "mid":
            layers[name] = LayerInfo("mid", deepest)
        else:
            layers[name] = LayerInfo(block, int(level) if block == "down" else deepest - int(level))
    return layers


@contextmanager
def installed(model: nn.Module, processors: Mapping[str, AttentionProcessor]) -> Iterator[None]:
    """Install ``processors`` (module path -> processor) on ``model``'s attention layers; restore on exit."""
    previous = {}
    try:
        for name, processor in processors.items():
            layer = model.get_submodule(name)
            if not isinstance(layer, Attention):
                raise TypeError(f"{name!r} is a {type(layer).__name__}, not an attention layer")
            previous[name] = layer.processor
            layer.processor = processor
        yield
    finally:
        for name, processor in previous.items():
            model.get_submodule(name).processor = processor
