"""Style-Dist (docs/metrics.md §3.3): Gatys-style Gram distance between each frame and the reference image(s).

For a layer with C channels and h x w positions, ``G = F F^T / (C h w)`` with F the ``C x hw`` feature matrix;
``d_l = mean((G_l(x) - G_l(r))^2)`` over the C x C entries; ``Style-Dist(x, r) = (1/L) sum_l d_l``. The video value
is the mean over frames (and over references when K > 1). Which layers (post-ReLU ``relu{1..5}_1`` by default,
or the conv layers before them) is the extractor's business; ``statistic="meanstd"`` swaps the Gram matrix for
AdaIN-style per-channel mean/std, the third variant of docs/metrics.md §3.3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evaluation.protocols import FeatureExtractor
from evaluation.video import as_video, frames_from

STATISTICS = ("gram", "meanstd")


def gram_matrix(features: Tensor) -> Tensor:
    """``[N, C, h, w]`` -> ``[N, C, C]``, normalised by C h w."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w).double()
    return flat @ flat.transpose(1, 2) / (c * h * w)


def _mean_std(features: Tensor) -> tuple[Tensor, Tensor]:
    flat = features.flatten(2).double()  # [N, C, hw]
    return flat.mean(dim=-1), flat.std(dim=-1, unbiased=False)


def style_stats(features: list[Tensor], statistic: str = "gram") -> list[tuple[Tensor, ...]]:
    """Per-layer statistics of a batch: ``(G,)`` for "gram", ``(mu, sigma)`` for "meanstd"."""
    if statistic == "gram":
        return [(gram_matrix(f),) for f in features]
    if statistic == "meanstd":
        return [_mean_std(f) for f in features]
    raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")


def style_dist_matrix(frame_stats: list[tuple[Tensor, ...]], ref_stats: list[tuple[Tensor, ...]]) -> Tensor:
    """Distances between every frame and every reference: ``[F, K]``, averaged over layers.

    Per layer and statistic, the squared difference is averaged over its entries (C x C for a Gram matrix, C for
    mean or std); "meanstd" adds its mean and std terms.
    """
    total = None
    for frame_layer, ref_layer in zip(frame_stats, ref_stats, strict=True):
        d = 0
        for a, b in zip(frame_layer, ref_layer, strict=True):  # a: [F, ...], b: [K, ...]
            diff = a.flatten(1)[:, None, :] - b.flatten(1)[None, :, :]  # [F, K, E]
            d = d + diff.square().mean(dim=-1)
        total = d if total is None else total + d
    return total / len(frame_stats)


@torch.no_grad()
def style_dist_per_frame(
    frames: Tensor, references: Tensor, extractor: FeatureExtractor, *, statistic: str = "gram"
) -> Tensor:
    """Style distance of each frame to the references (mean over K): ``[F]`` (float64)."""
    frame_stats = style_stats(extractor(as_video(frames)), statistic)
    ref_stats = style_stats(extractor(as_video(references)), statistic)
    return style_dist_matrix(frame_stats, ref_stats).mean(dim=1)


def style_dist(
    frames: Tensor,
    references: Tensor,
    extractor: FeatureExtractor,
    *,
    statistic: str = "gram",
    include_first_frame: bool = True,
) -> float:
    """Style-Dist(v): mean over frames (``frames[1:]`` when ``include_first_frame`` is False) and references."""
    frames = frames_from(as_video(frames), include_first_frame)
    return float(style_dist_per_frame(frames, references, extractor, statistic=statistic).mean())
