"""The hooks' resolution levels come from the network's config, not from SD1.5's literal block layout."""

from __future__ import annotations

from collections import Counter

from animatezero.hooks import spatial_self_attention_layers, temporal_attention_layers
from models.config import MotionConfig, UNetConfig
from models.loading import build_on_meta
from models.motion_module import MotionModules
from models.unet import UNetModel


def test_sd15_levels():
    layers = spatial_self_attention_layers(build_on_meta(lambda: UNetModel(UNetConfig())))
    assert layers["input_blocks.1.1.transformer_blocks.0.attn1"].level == 0
    assert layers["input_blocks.8.1.transformer_blocks.0.attn1"].level == 2
    assert layers["middle_block.1.transformer_blocks.0.attn1"].level == 3
    assert layers["output_blocks.3.1.transformer_blocks.0.attn1"].level == 2
    assert layers["output_blocks.11.1.transformer_blocks.0.attn1"].level == 0
    temporal = temporal_attention_layers(build_on_meta(lambda: MotionModules(MotionConfig.for_version(2))))
    assert Counter((i.block, i.level) for i in temporal.values()) == Counter(
        {**{("down", lv): 4 for lv in range(4)}, ("mid", 3): 2, **{("up", lv): 6 for lv in range(4)}}
    )


def test_other_layouts_follow_the_config():
    # 3 levels, one ResBlock per down level: input_blocks 1 | 2 down | 3 | 4 down | 5; output_blocks 0-1 | 2-3 | 4-5
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(0, 1, 2))
    layers = spatial_self_attention_layers(build_on_meta(lambda: UNetModel(cfg)))
    levels = {name.split(".transformer_blocks")[0]: (i.block, i.level) for name, i in layers.items()}
    assert levels == {
        "input_blocks.1.1": ("down", 0),
        "input_blocks.3.1": ("down", 1),
        "input_blocks.5.1": ("down", 2),
        "middle_block.1": ("mid", 2),
        "output_blocks.0.1": ("up", 2),
        "output_blocks.1.1": ("up", 2),
        "output_blocks.2.1": ("up", 1),
        "output_blocks.3.1": ("up", 1),
        "output_blocks.4.1": ("up", 0),
        "output_blocks.5.1": ("up", 0),
    }
    mcfg = MotionConfig(version=2, block_channels=(32, 64, 64), layers_per_block=1, max_positions=32)
    temporal = temporal_attention_layers(build_on_meta(lambda: MotionModules(mcfg)))
    assert {(i.block, i.level) for i in temporal.values()} == {
        ("down", 0),
        ("down", 1),
        ("down", 2),
        ("mid", 2),
        ("up", 2),
        ("up", 1),
        ("up", 0),
    }
    assert (
        temporal["up_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0"].level == 2
    )
