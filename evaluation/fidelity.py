"""First-frame fidelity (docs/metrics.md §3.6): PSNR, SSIM and LPIPS between the given image and frame 0.

This checks AnimateZero's claim that the video's first frame reproduces the T2I (or given) image. PSNR and SSIM
need no weights; LPIPS takes an injected :class:`~evaluation.protocols.PerceptualDistance`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.protocols import PerceptualDistance
from evaluation.video import as_image, as_video, resize_to

PSNR_CAP_DB = 100.0  # PSNR of identical images (MSE = 0) is reported as this instead of +inf


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements, ``10 log10(range^2 / MSE)``, capped at ``PSNR_CAP_DB``.

    The cap keeps the results JSON finite; any PSNR at the cap means the images are (numerically) identical.
    """
    mse = float((as_video(a).double() - as_video(b).double()).square().mean())
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(10.0 * math.log10(data_range**2 / mse), PSNR_CAP_DB)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # [size, size]


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged
    over the valid (unpadded) window positions, channels and images. Same defaults as torchmetrics and skimage's
    ``gaussian_weights=True``; SSIM(x, x) = 1."""
    x, y = as_video(a).double(), as_video(b).double()
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    c = x.shape[1]
    kernel = _gaussian_window(window, sigma, x.dtype, x.device).expand(c, 1, window, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)  # valid positions only

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


@torch.no_grad()
def lpips_distance(a: Tensor, b: Tensor, net: PerceptualDistance) -> float:
    """Mean LPIPS between two batches of [0, 1] images (the wrapper maps them to the [-1, 1] LPIPS expects)."""
    return float(net(as_video(a), as_video(b)).float().mean())


def first_frame_fidelity(
    frames: Tensor, image: Tensor, lpips_net: PerceptualDistance | None = None
) -> dict[str, float]:
    """PSNR / SSIM (/ LPIPS when ``lpips_net`` is given) between ``image`` and ``frames[0]``.

    When their sizes differ the given image is resized (antialiased bilinear) to the frame size first.
    """
    frame0 = as_video(frames)[:1]
    ref = resize_to(as_image(image), tuple(frame0.shape[-2:])).clamp(0.0, 1.0)
    out = {"psnr": psnr(frame0, ref), "ssim": ssim(frame0, ref)}
    if lpips_net is not None:
        out["lpips"] = lpips_distance(frame0, ref, lpips_net)
    return out
