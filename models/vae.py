"""The SD1.5 KL autoencoder (``first_stage_model``), with the CompVis ``ldm`` module names.

Attribute paths equal the checkpoint keys under ``first_stage_model.`` (``encoder.down.0.block.1.norm1``,
``decoder.mid.attn_1.q``, ``quant_conv``, ...), so loading is a strict ``load_state_dict`` after the prefix is
stripped. The mid-block attention's ``q/k/v/proj_out`` are 1x1 ``Conv2d`` and expect 4-D ``[c, c, 1, 1]`` weights;
reshaping the 2-D ``[c, c]`` variant found in some old converted files is the loader's job, not this module's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.attention import attention
from models.config import VAEConfig

LATENT_SCALE = 0.18215  # SD1.x scale_factor: unit-variance latents are z = LATENT_SCALE * posterior sample


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """ldm's ``Normalize``: every VAE norm is GroupNorm with eps 1e-6 (the UNet's use 1e-5)."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv3x3 twice, plus a 1x1 ``nin_shortcut`` on the skip path when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all ``h*w`` positions (scale ``c ** -0.5``), 1x1-conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = (rearrange(proj(h), "b c h w -> b (h w) c") for proj in (self.q, self.k, self.v))
        out = attention(q, k, v, heads=1)  # [b, h*w, c]
        out = rearrange(out, "b (h w) c -> b c h w", h=x.shape[-2])
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 conv3x3 after an asymmetric zero pad (right and bottom only), as in ldm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image ``[b, 3, H, W]`` -> posterior moments ``[b, 2*z, H/8, W/8]`` (before ``quant_conv``)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, c in enumerate(chs):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, c, g))
                cin = c
            if i < len(chs) - 1:
                level.downsample = Downsample(c)
            self.down.append(level)
        self.mid = Mid(cin, g)
        self.norm_out = group_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[b, z, h, w]`` (after ``post_quant_conv``) -> image ``[b, 3, 8h, 8w]``.

    ``up`` is indexed like the encoder's ``down`` (``up.0`` is the full-resolution level), so it runs in reverse:
    ``up.3`` first, ``up.0`` last.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_channels, cfg.norm_groups
        cin = chs[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = Mid(cin, g)
        levels = []
        for i in reversed(range(len(chs))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, chs[i], g))
                cin = chs[i]
            if i > 0:
                level.upsample = Upsample(cin)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = group_norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """SD1.5 VAE. Images are ``[b, 3, H, W]`` in ``[-1, 1]``; latents are *scaled* (``LATENT_SCALE`` applied)."""

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        cfg = cfg or VAEConfig()
        self.cfg = cfg
        z = cfg.z_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Image ``[b, 3, H, W]`` -> scaled latent ``[b, 4, H/8, W/8]``: the posterior mean, or a draw from the
        diagonal Gaussian posterior when ``sample`` (``logvar`` clamped to ``[-30, 20]`` as in ldm)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + std * noise
        return mean * LATENT_SCALE

    def decode(self, z_scaled: Tensor, chunk_size: int | None = None) -> Tensor:
        """Scaled latent ``[b, 4, h, w]`` -> image ``[b, 3, 8h, 8w]`` (roughly in ``[-1, 1]``, not clamped).

        ``chunk_size`` decodes that many batch items at a time, bounding activation memory (e.g. video frames
        folded into the batch); the result does not depend on it.
        """
        chunks = z_scaled.split(chunk_size) if chunk_size else (z_scaled,)
        return torch.cat([self.decoder(self.post_quant_conv(z / LATENT_SCALE)) for z in chunks])
