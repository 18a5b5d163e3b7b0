"""Layers shared by the SD1.5 UNet (``models/unet.py``) and the AnimateDiff motion modules (``models/motion_module.py``).

Both networks use the same GEGLU feed-forward with the same checkpoint key names (``ff.net.0.proj``, ``ff.net.2``);
it lives here so that neither network file imports the other.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GEGLU(nn.Module):
    """``h * gelu(g)`` with ``[h, g] = proj(x)`` and the exact (erf) GELU."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """SD/AnimateDiff feed-forward: ``net = [GEGLU(C -> 4C), Dropout, Linear(4C -> C)]``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
