"""Flow-based metrics: warping error (docs/metrics.md §3.4) and motion amount (§3.6).

Warping error follows Lai et al. 2018 (``fast_blind_video_consistency``), as EvalCrafter does. For each pair
(I_t, I_{t+1}) with forward flow f = Flow(I_t -> I_{t+1}) and backward flow b = Flow(I_{t+1} -> I_t):

1. ``W(p) = I_{t+1}(p + f(p))`` (bilinear, zeros outside the image);
2. with ``b~(p) = b(p + f(p))``, p is occluded if ``|f + b~|^2 > 0.01 (|f|^2 + |b~|^2) + 0.5`` or
   ``|d_x f|^2 + |d_y f|^2 > 0.01 |f|^2 + 0.002`` (forward differences, zero in the last row/column);
3. ``E_t = sum_p M(p) ||I_t(p) - W(p)||^2 / (3 sum_p M(p))`` with M = not occluded (all elements when M is empty);
4. ``WE(v) = mean_t E_t``.

The warp and the mask are computed in float64 so that an exact flow gives an error at rounding level.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.protocols import FlowEstimator
from evaluation.video import as_video, frames_from


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp: ``out(p) = x(p + flow(p))``, bilinear, zero outside. ``[B, C, H, W]``, ``[B, 2, H, W]``.

    Pixel coordinates map to grid_sample's [-1, 1] with ``align_corners=True`` (x -> 2x/(W-1) - 1).
    """
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype, device=flow.device),
        torch.arange(w, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0  # [B, H, W]
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # [B, H, W, 2]
    return F.grid_sample(x.to(flow.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def occlusion_mask(forward: Tensor, backward: Tensor) -> Tensor:
    """True where a pixel of frame t is occluded or on a motion boundary (Lai et al. ``detect_occlusion``).

    ``forward``: flow t -> t+1, ``backward``: flow t+1 -> t, both ``[B, 2, H, W]``. Returns bool ``[B, H, W]``.
    """
    back_warped = warp(backward, forward)  # b~(p) = b(p + f(p))
    fb_sq = (forward + back_warped).square().sum(dim=1)
    f_sq = forward.square().sum(dim=1)
    bw_sq = back_warped.square().sum(dim=1)
    inconsistent = fb_sq > 0.01 * (f_sq + bw_sq) + 0.5

    du = torch.zeros_like(forward)
    dv = torch.zeros_like(forward)
    du[..., :, :-1] = forward[..., :, :-1] - forward[..., :, 1:]  # horizontal forward difference, both components
    dv[..., :-1, :] = forward[..., :-1, :] - forward[..., 1:, :]  # vertical
    grad_sq = du.square().sum(dim=1) + dv.square().sum(dim=1)
    boundary = grad_sq > 0.01 * f_sq + 0.002
    return inconsistent | boundary


def warping_error_per_pair(frames: Tensor, forward: Tensor, backward: Tensor) -> Tensor:
    """E_t for each consecutive pair: frames ``[F, 3, H, W]``, flows ``[F-1, 2, H, W]`` -> float64 ``[F-1]``."""
    frames = as_video(frames)
    forward, backward = forward.double(), backward.double()
    current, following = frames[:-1].double(), frames[1:].double()
    warped = warp(following, forward)  # [F-1, 3, H, W]
    valid = (~occlusion_mask(forward, backward)).double()[:, None]  # [F-1, 1, H, W]
    sq = (current - warped).square() * valid
    n_valid = valid.sum(dim=(1, 2, 3)) * current.shape[1]  # the mask counts pixel-channels (3-channel mask)
    n_valid = torch.where(n_valid > 0, n_valid, torch.full_like(n_valid, float(current[0].numel())))
    return sq.sum(dim=(1, 2, 3)) / n_valid


@torch.no_grad()
def pair_flows(frames: Tensor, flow: FlowEstimator) -> tuple[Tensor, Tensor]:
    """Forward flows (t -> t+1) and backward flows (t+1 -> t) of all consecutive pairs, each ``[F-1, 2, H, W]``."""
    frames = as_video(frames)
    return flow(frames[:-1], frames[1:]).float(), flow(frames[1:], frames[:-1]).float()


def warping_error(frames: Tensor, flow: FlowEstimator, *, include_first_frame: bool = True) -> float:
    """WE(v) = mean over consecutive pairs of the occlusion-masked MSE; ``include_first_frame=False`` uses
    ``frames[1:]``. NaN for fewer than two frames."""
    frames = frames_from(as_video(frames), include_first_frame)
    if frames.shape[0] < 2:
        return float("nan")
    forward, backward = pair_flows(frames, flow)
    return float(warping_error_per_pair(frames, forward, backward).mean())


def flow_magnitude_per_pair(forward: Tensor) -> Tensor:
    """Mean flow magnitude |f| (pixels) of each pair: ``[P, 2, H, W]`` -> ``[P]`` (EvalCrafter flow score)."""
    return forward.double().square().sum(dim=1).sqrt().flatten(1).mean(dim=1)


def top_flow_magnitude_per_pair(forward: Tensor, fraction: float = 0.05) -> Tensor:
    """Mean of the largest ``fraction`` of flow magnitudes of each pair (VBench dynamic degree's per-pair score)."""
    mag = forward.double().square().sum(dim=1).sqrt().flatten(1)  # [P, HW]
    k = max(int(mag.shape[1] * fraction), 1)
    return mag.topk(k, dim=1).values.mean(dim=1)


def is_dynamic(top_magnitudes: Tensor, num_frames: int, height: int, width: int) -> bool:
    """VBench ``check_move``: a video moves if at least round(4 F / 16) pairs exceed 6 min(H, W) / 256 pixels."""
    threshold = 6.0 * min(height, width) / 256.0
    needed = round(4 * num_frames / 16.0)
    return int((top_magnitudes > threshold).sum()) >= needed


def motion_amount(frames: Tensor, flow: FlowEstimator, *, include_first_frame: bool = True) -> float:
    """Mean forward-flow magnitude in pixels, averaged over consecutive pairs (depends on resolution)."""
    frames = frames_from(as_video(frames), include_first_frame)
    if frames.shape[0] < 2:
        return float("nan")
    with torch.no_grad():
        forward = flow(frames[:-1], frames[1:])
    return float(flow_magnitude_per_pair(forward).mean())


def dynamic_degree(frames: Tensor, flow: FlowEstimator) -> bool:
    """VBench dynamic degree of one video (the dataset score is the fraction of videos for which this is True)."""
    frames = as_video(frames)
    if frames.shape[0] < 2:
        return False
    with torch.no_grad():
        forward = flow(frames[:-1], frames[1:])
    num_frames, _, height, width = frames.shape
    return is_dynamic(top_flow_magnitude_per_pair(forward), num_frames, height, width)


def nan_mean(values: Tensor) -> float:
    """Mean of a 1-D tensor, NaN when it is empty."""
    return float(values.mean()) if values.numel() else math.nan
