"""The one input convention of ``evaluation/``: videos are float ``[F, 3, H, W]`` in [0, 1], images ``[1, 3, H, W]``.

:func:`as_video` and :func:`as_image` are the only places that accept other layouts (uint8 ``[F, H, W, 3]`` as
decoders give them, numpy arrays, single images). The resize helpers are the fixed resize path of
docs/metrics.md §2 (antialiased, as ``torchvision.transforms.functional.resize(antialias=True)`` does on tensors).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def as_video(video: Tensor | np.ndarray) -> Tensor:
    """Normalise a video to float32 ``[F, 3, H, W]`` in [0, 1].

    Accepts uint8 ``[F, H, W, 3]`` (or uint8 ``[F, 3, H, W]``), scaled by 1/255, and float ``[F, 3, H, W]`` in
    [0, 1], returned as float32 (values are not clamped; a float video outside [-1e-3, 1+1e-3] is rejected because
    it is almost certainly in [-1, 1] or 0-255). A single image (3-D) becomes a one-frame video.
    """
    x = torch.from_numpy(np.array(video)) if isinstance(video, np.ndarray) else video  # copy: may be read-only
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected a video [F, 3, H, W] or [F, H, W, 3], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)  # [F, H, W, 3] -> [F, 3, H, W]
        elif x.shape[1] != 3:
            raise ValueError(f"uint8 video must be [F, H, W, 3] or [F, 3, H, W], got {tuple(x.shape)}")
        return x.float().div(255.0).contiguous()
    if not x.is_floating_point():
        raise ValueError(f"video must be uint8 or floating point, got {x.dtype}")
    if x.shape[1] != 3:
        raise ValueError(f"float video must be [F, 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise ValueError(f"float video must be in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    return x.float().contiguous()


def as_image(image: Tensor | np.ndarray) -> Tensor:
    """Normalise one image (uint8 ``[H, W, 3]``, float ``[3, H, W]`` or either with a leading 1) to ``[1, 3, H, W]``."""
    x = as_video(image)
    if x.shape[0] != 1:
        raise ValueError(f"expected a single image, got {x.shape[0]} frames")
    return x


def resize_short_side(x: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Resize ``[N, C, H, W]`` so that min(H, W) == size, keeping the aspect ratio (antialiased)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    out = F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0) if mode == "bicubic" else out  # bicubic overshoots; inputs are in [0, 1]


def center_crop(x: Tensor, size: int) -> Tensor:
    """Crop the central ``size x size`` window of ``[N, C, H, W]`` (H, W >= size)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def resize_to(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize of ``[N, C, H, W]`` to exactly ``hw`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def frames_from(values: Tensor, include_first_frame: bool) -> Tensor:
    """Per-frame or per-pair values, minus frame 0 (or the pair (0, 1)) when ``include_first_frame`` is False."""
    return values if include_first_frame else values[1:]
