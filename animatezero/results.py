"""What the pipeline returns: an image with the trajectory that made it (step 1), and a video (step 2)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from animatezero.io import save_image, save_video
from animatezero.processors import KVBank


@dataclass
class ImageResult:
    """Step 1's output. ``trajectory[i]`` is the latent entering sampling step ``i`` (``z_T`` first) and
    ``trajectory[-1]`` the final latent ``z_0``: ``steps + 1`` latents ``[1, 4, h, w]``, at ``timesteps``."""

    image: Tensor  # [3, H, W] float in [0, 1]
    latent: Tensor  # z_0 [1, 4, h, w]
    trajectory: list[Tensor]
    timesteps: list[int]
    prompt: str
    negative_prompt: str
    guidance_scale: float
    seed: int | None
    kv_bank: KVBank | None = None  # first-frame spatial self-attention K/V per layer and step (record_kv=True)
    info: dict = field(default_factory=dict)  # e.g. reconstruction PSNR of an inverted real image

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def height(self) -> int:
        return self.image.shape[-2]

    @property
    def width(self) -> int:
        return self.image.shape[-1]

    def save(self, path: str | os.PathLike) -> Path:
        save_image(self.image, path)
        return Path(path)


@dataclass
class VideoResult:
    """A generated clip: ``frames [f, 3, H, W]`` float in [0, 1] and the final latents ``[1, 4, f, h, w]``."""

    frames: Tensor
    latents: Tensor
    prompt: str
    seed: int | None
    fps: int = 8
    info: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def save(self, path: str | os.PathLike, fps: int | None = None) -> Path:
        """``.mp4``, ``.gif``, or a folder of PNG frames (any path without a suffix)."""
        save_video(self.frames, path, fps=self.fps if fps is None else fps)
        return Path(path)


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (capped at 100 dB for identical images): how exactly an anchor frame
    reproduces its image (``VideoResult.info["frame0_psnr_db"]``) or a VAE its input (``ImageResult.info["psnr_db"]``);
    the experiments' quick metric uses it too."""
    mse = torch.mean((a.float().cpu() - b.float().cpu()) ** 2).item()
    return 100.0 if mse <= 1e-10 else min(100.0, 10 * math.log10(1.0 / mse))
