"""What a metric needs from an evaluator network. Real networks (``extractors.py``) and test doubles both fit.

Every image argument is float ``[N, 3, H, W]`` in [0, 1]; a network does its own resizing and normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor


class ImageTextEncoder(Protocol):
    """A CLIP-like dual encoder. Embeddings need not be normalised; metrics L2-normalise them."""

    def encode_image(self, images: Tensor) -> Tensor:  # [N, 3, H, W] in [0, 1] -> [N, D]
        ...

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # N strings -> [N, D]
        ...


class FlowEstimator(Protocol):
    """Optical flow from ``image1`` to ``image2``: ``[B, 3, H, W]`` x 2 -> ``[B, 2, H, W]`` in pixels.

    Channel 0 is the horizontal displacement (x), channel 1 the vertical (y): pixel p of image1 sits at
    ``p + flow(p)`` in image2.
    """

    def __call__(self, image1: Tensor, image2: Tensor) -> Tensor: ...


class FeatureExtractor(Protocol):
    """Style features: ``[N, 3, H, W]`` -> one ``[N, C_l, h_l, w_l]`` activation per layer."""

    def __call__(self, images: Tensor) -> list[Tensor]: ...


class PerceptualDistance(Protocol):
    """A learned distance such as LPIPS: two ``[N, 3, H, W]`` batches -> ``[N]`` (0 for identical images)."""

    def __call__(self, a: Tensor, b: Tensor) -> Tensor: ...


def network_meta(network: object) -> dict:
    """What a results file records about a network: its ``meta`` dict if it has one, else its class name."""
    meta = getattr(network, "meta", None)
    if isinstance(meta, dict):
        return dict(meta)
    return {"name": type(network).__name__, "weights": "injected"}
