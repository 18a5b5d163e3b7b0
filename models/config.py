"""Architecture hyper-parameters of SD1.5 and the AnimateDiff motion modules.

Defaults are the real SD1.5 (``v1-inference.yaml``) and motion-module v2 values; each class has a ``tiny()``
variant with the same key layout at a small width, used by the tests. Loaders infer the widths from the
checkpoint's tensor shapes, so a tiny file and a real file go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetConfig:
    model_channels: int = 320  # width of level 0; levels are model_channels * channel_mult
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # ResBlocks per down level (up levels have one more)
    attention_levels: tuple[int, ...] = (0, 1, 2)  # levels with a SpatialTransformer
    num_heads: int = 8  # SD1.x: fixed head count, head_dim = C / 8
    context_dim: int = 768  # CLIP text width
    in_channels: int = 4
    out_channels: int = 4
    norm_groups: int = 32

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    @classmethod
    def tiny(cls) -> UNetConfig:
        return cls(model_channels=32, context_dim=64)


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # encoder; the decoder has num_res_blocks + 1 per level
    z_channels: int = 4
    in_channels: int = 3
    norm_groups: int = 32

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @classmethod
    def tiny(cls) -> VAEConfig:
        return cls(ch=32)


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    max_positions: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12  # ViT-L/14 text tower: head_dim 64
    mlp_dim: int = 3072  # quick_gelu MLP

    @classmethod
    def tiny(cls) -> CLIPTextConfig:
        return cls(width=64, layers=2, heads=1, mlp_dim=256)


@dataclass(frozen=True)
class MotionConfig:
    """AnimateDiff motion-module tree; ``version`` is 1 (mm_sd_v14/v15), 2 (mm_sd_v15_v2) or 3 (v3_sd15_mm)."""

    version: int = 2
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)  # must equal the UNet's
    layers_per_block: int = 2  # down levels; up levels have layers_per_block + 1
    num_heads: int = 8
    max_positions: int = 32  # length of the sinusoidal table: 24 for v1, 32 for v2/v3
    norm_groups: int = 32

    @property
    def mid_block(self) -> bool:
        """Only v2 has a motion module in the UNet's middle block."""
        return self.version == 2

    @property
    def cross_frame_resnet_norm(self) -> bool:
        """v1 was trained with UNet ResBlock GroupNorms whose statistics span all frames ("non-inflated")."""
        return self.version == 1

    @classmethod
    def for_version(cls, version: int, block_channels: tuple[int, ...] = (320, 640, 1280, 1280)) -> MotionConfig:
        if version not in (1, 2, 3):
            raise ValueError(f"unknown AnimateDiff motion-module version {version!r}; expected 1, 2 or 3")
        return cls(version=version, block_channels=block_channels, max_positions=24 if version == 1 else 32)

    @classmethod
    def tiny(cls, version: int = 2) -> MotionConfig:
        return cls.for_version(version, UNetConfig.tiny().block_channels)
