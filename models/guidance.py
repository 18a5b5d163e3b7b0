"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a conditional noise predictor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from models.ddim import Denoiser

NoisePredictor = Callable[[Tensor, int, Tensor], Tensor]  # (x, t, context) -> eps


def cfg_denoiser(model: NoisePredictor, cond: Tensor, uncond: Tensor, scale: float) -> Denoiser:
    """Return ``denoise(x, t) = u + scale * (c - u)``.

    The model sees one batch ordered **[uncond, cond]** along dim 0 (as the original AnimateDiff and diffusers do,
    docs/checkpoints.md §2.8), so batch-dependent attention processors can tell the halves apart. With ``scale == 1`` only
    the conditional branch runs.
    """
    if scale == 1.0:
        return lambda x, t: model(x, t, cond)
    context = torch.cat([uncond, cond])  # [2b, ...]

    def denoise(x: Tensor, t: int) -> Tensor:
        eps_u, eps_c = model(torch.cat([x, x]), t, context).chunk(2)  # [2b, ...] -> 2 x [b, ...]
        return eps_u + scale * (eps_c - eps_u)

    return denoise
