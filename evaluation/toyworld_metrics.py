"""Ground-truth metrics for the toy world (:mod:`evaluation.toyworld`): analytic, no network, no download.

Every toy-world clip shows one flat-coloured object on a plain background, so the object can be found exactly:

* **Detection** (:func:`detect`), per frame: the background is the median colour of the frame's 1-pixel border
  (or a given background name); foreground = pixels farther than ``FG_THRESHOLD`` (RGB Euclidean) from it; the
  object = the largest 8-connected foreground component. Its **color** class is the palette colour nearest to the
  component's median colour; **area** and **centroid** (pixels) are the sum and the mean position of the per-pixel
  coverage of that colour over the background (sub-pixel exact on anti-aliased frames); its **shape** class is the
  shape whose ideal coverage (the world's own geometry, placed at that centroid with that area, supersampled)
  overlaps the measured coverage best (soft IoU, sum of minima over sum of maxima), if that IoU is at least
  ``SHAPE_MIN_IOU`` (else none: a blob is no shape).
  No object is found when that component is smaller than ``MIN_AREA`` pixels or covers more than ``MAX_AREA_FRAC``
  of the frame (noise, a blank frame, a frame that is all "object").
* **Text-to-image prompt accuracy** (:func:`prompt_accuracy`) on one image: color, shape and background class equal
  the caption's (0/1 each; ``prompt_acc`` = all three).
* **Motion accuracy** (:func:`classify_motion`): least-squares line through the centroid track and the log of the
  equivalent radius over clip time [0, 1]; translation ``d`` (px over the clip) and log size change ``g``. Each is
  compared with its size in the world (``TRAVEL`` px; ``log(GROW_SIZE[1] / GROW_SIZE[0])``): the larger of
  ``|d| / TRAVEL`` and ``|g| / log-grow`` decides between moving (direction from the dominant axis and sign) and
  growing/shrinking (sign of g); if both are below ``STATIC_FRACTION`` the clip is ``static``, which matches no
  caption.
* **Appearance consistency with frame 0**: the fraction of frames 1.. whose object is found with frame 0's color
  and shape class (``consistency``; also per attribute), and ``size_change``, the mean relative change of the
  equivalent radius against frame 0, ``mean_t |r_t / r_0 - 1|`` (NaN for growing/shrinking captions, where the size
  is meant to change).
* **Temporal smoothness**: ``track_jerk``, the mean norm of the second difference of the track (centroid x, y and
  equivalent radius, px) over consecutive frames; 0 for the world's constant-speed clips. ``pixel_jerk``, the mean
  absolute second difference of the frames' pixels (in [0, 2]).
* **Frame-0 fidelity**: ``frame0_psnr``, PSNR of frame 0 against a reference image (the run's step-1 image), dB,
  capped at 100 dB (identical).

:func:`score_video` returns all of them as ``toyworld_*`` floats. Videos are float ``[F, 3, H, W]`` in [0, 1],
images ``[3, H, W]``; any size works (geometry thresholds are in 64x64 pixels and scaled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation import toyworld as tw

FG_THRESHOLD = 0.3  # RGB distance from the background above which a pixel is foreground (palette gaps are >= 0.87)
MIN_AREA = 8.0  # pixels (at 64x64): a smaller largest component is "no object"
MAX_AREA_FRAC = 0.5  # a component covering more of the frame is not an object of this world
SHAPE_MIN_IOU = 0.5  # a component overlapping every ideal shape less than this has no shape class (rendered: > 0.8)
STATIC_FRACTION = 0.25  # motion below a quarter of the world's travel / growth is "static"
PSNR_CAP_DB = 100.0
STATIC = "static"
_LOG_GROW = math.log(tw.GROW_SIZE[1] / tw.GROW_SIZE[0])  # log size ratio of a growing clip, end to end


@dataclass(frozen=True)
class Detection:
    """The object found in one frame (``found=False``: none; the other fields are then None/NaN)."""

    found: bool
    color: str | None = None
    shape: str | None = None
    background: str | None = None  # background class (nearest background colour of the border)
    x: float = math.nan  # centroid, pixels from the left edge (pixel centres at i + 0.5)
    y: float = math.nan  # centroid, pixels from the top edge
    area: float = math.nan  # pixels
    shape_iou: float = math.nan  # IoU with the chosen shape's ideal mask

    @property
    def radius(self) -> float:
        """Radius of the circle of equal area (the world's size unit)."""
        return math.sqrt(self.area / math.pi) if self.found else math.nan


def _check_video(video: Tensor) -> Tensor:
    if not isinstance(video, Tensor) or video.ndim != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"expected a video [frames, 3, H, W] in [0, 1], got {shape}")
    return video.detach().float().cpu()


def _nearest(rgb: Tensor, palette: dict[str, tuple[float, float, float]]) -> list[str]:
    """Name of the nearest palette colour for each row of ``rgb [n, 3]``."""
    names = list(palette)
    table = torch.tensor([palette[n] for n in names])  # [k, 3]
    return [names[i] for i in torch.cdist(rgb, table).argmin(dim=1).tolist()]


def _border_colour(video: Tensor) -> Tensor:
    """Median colour of each frame's 1-pixel border: ``[f, 3, H, W] -> [f, 3]``."""
    border = torch.cat(
        [video[:, :, 0, :], video[:, :, -1, :], video[:, :, 1:-1, 0], video[:, :, 1:-1, -1]], dim=2
    )  # [f, 3, n_border]
    return border.median(dim=2).values


def _max3x3(x: Tensor) -> Tensor:
    """Maximum over each pixel's 3x3 neighbourhood of non-negative ``x [f, H, W]`` (zero outside the frame); four
    elementwise maxima, much cheaper on a CPU than ``max_pool2d``."""
    p = F.pad(x, (1, 1, 1, 1))  # [f, H + 2, W + 2]
    rows = torch.maximum(torch.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])  # [f, H, W + 2]
    return torch.maximum(torch.maximum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _largest_component(mask: Tensor) -> Tensor:
    """Largest 8-connected component of each bool mask ``[f, H, W]`` (each pixel takes the largest pixel id of its
    component by repeated 3x3 maxima within the mask)."""
    f, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(f, h, w)
    labels = torch.where(mask, ids, torch.zeros(()))
    for _ in range(h * w):
        grown = _max3x3(labels) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    out = torch.zeros_like(mask)
    for k in range(f):
        values, counts = labels[k][mask[k]].unique(return_counts=True)
        if values.numel():
            out[k] = labels[k] == values[counts.argmax()]
    return out


def _shape_templates(xs: Tensor, ys: Tensor, radii: Tensor, h: int, w: int, supersample: int = 2) -> Tensor:
    """Ideal coverage ``[n, 3, h, w]`` in [0, 1] of each shape of the world (its own geometry, ``supersample`` x
    ``supersample`` samples per pixel) centred at (xs, ys) with equal-area radius ``radii`` (all ``[n]``, pixels)."""
    n, k, ss = xs.numel(), len(tw.SHAPES), supersample
    cols = (torch.arange(w * ss, dtype=torch.float32) + 0.5) / ss
    rows = (torch.arange(h * ss, dtype=torch.float32) + 0.5) / ss
    x = cols.view(1, 1, -1) - xs.repeat_interleave(k).view(-1, 1, 1)  # [n * 3, 1, w * ss]
    y = rows.view(1, -1, 1) - ys.repeat_interleave(k).view(-1, 1, 1)  # [n * 3, h * ss, 1]
    x, y = torch.broadcast_tensors(x, y)  # [n * 3, h * ss, w * ss]
    inside = tw._mask(list(tw.SHAPES) * n, x, y, radii.repeat_interleave(k).view(-1, 1, 1)).float()
    return F.avg_pool2d(inside[:, None], ss)[:, 0].view(n, k, h, w)


def detect_video(video: Tensor, background: str | None = None) -> list[Detection]:
    """:class:`Detection` of the object in every frame of ``video [f, 3, H, W]``.

    ``background``: the known background name (its palette colour is used for the foreground mask); None estimates
    it per frame as the median border colour. The reported ``background`` class is always the border's nearest
    background colour, so it can be checked against a caption.
    """
    video = _check_video(video)
    f, _, h, w = video.shape
    border = _border_colour(video)  # [f, 3]
    bg_names = _nearest(border, tw.BACKGROUNDS)
    if background is not None:
        if background not in tw.BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; expected one of {tuple(tw.BACKGROUNDS)}")
        bg = torch.tensor(tw.BACKGROUNDS[background]).expand(f, 3)
    else:
        bg = border
    fg = (video - bg[:, :, None, None]).norm(dim=1) > FG_THRESHOLD  # [f, H, W]
    obj = _largest_component(fg)
    count = obj.sum(dim=(1, 2)).float()  # [f] pixels in the component
    px_scale = (h * w) / tw.SIZE**2
    found = (count >= MIN_AREA * px_scale) & (count <= MAX_AREA_FRAC * h * w)
    # Per-pixel coverage ("alpha") of the object colour over the background, in the component and its 1-pixel
    # rim (anti-aliased edges fall below the threshold): sub-pixel area and centroid, exact on rendered frames.
    colour = torch.stack(
        [video[k][:, obj[k]].median(dim=1).values if found[k] else bg[k] for k in range(f)]
    )  # [f, 3] the object's median colour
    span = colour - bg  # [f, 3]
    alpha = (
        torch.einsum("fchw,fc->fhw", video - bg[:, :, None, None], span)
        / span.square().sum(1).clamp_min(1e-6)[:, None, None]
    )
    rim = _max3x3(obj.float()) > 0
    alpha = alpha.clamp(0, 1) * rim  # [f, H, W]
    area = alpha.sum(dim=(1, 2))  # [f]
    cols = torch.arange(w, dtype=torch.float32) + 0.5
    rows = torch.arange(h, dtype=torch.float32) + 0.5
    safe = area.clamp_min(1e-6)
    xs = (alpha.sum(dim=1) * cols).sum(dim=1) / safe  # [f]
    ys = (alpha.sum(dim=2) * rows).sum(dim=1) / safe
    radii = (safe / math.pi).sqrt()
    templates = _shape_templates(xs, ys, radii, h, w)  # [f, 3, H, W]
    inter = torch.minimum(templates, alpha[:, None]).sum(dim=(2, 3))  # soft (coverage) IoU
    union = torch.maximum(templates, alpha[:, None]).sum(dim=(2, 3)).clamp_min(1e-6)
    iou = inter / union  # [f, 3]
    out = []
    for k in range(f):
        if not found[k]:
            out.append(Detection(False, background=bg_names[k]))
            continue
        best = int(iou[k].argmax())
        shape = tw.SHAPES[best] if iou[k, best] >= SHAPE_MIN_IOU else None
        out.append(
            Detection(
                True,
                color=_nearest(colour[k : k + 1], tw.COLORS)[0],
                shape=shape,
                background=bg_names[k],
                x=float(xs[k]),
                y=float(ys[k]),
                area=float(area[k]),
                shape_iou=float(iou[k, best]),
            )
        )
    return out


def detect(frame: Tensor, background: str | None = None) -> Detection:
    """:class:`Detection` of the object in one frame ``[3, H, W]`` in [0, 1] (see :func:`detect_video`)."""
    if not isinstance(frame, Tensor) or frame.ndim != 3:
        raise ValueError(f"expected a frame [3, H, W], got {getattr(frame, 'shape', type(frame).__name__)}")
    return detect_video(frame[None], background)[0]


def _parse(caption: str) -> dict[str, str]:
    attrs = tw.parse_caption(caption)
    if attrs is None:
        raise ValueError(
            f"caption {caption!r} is outside the toy-world grammar "
            "('a {color} {shape} {motion} on a {background} background'); toy-world metrics need one inside it"
        )
    return attrs


def prompt_accuracy(image: Tensor, caption: str) -> dict[str, float]:
    """Text-to-image accuracy of one image ``[3, H, W]``: ``color_acc``, ``shape_acc``, ``background_acc`` (0/1:
    the detected class equals the caption's; no object found = 0 for color and shape) and ``prompt_acc`` (all
    three right)."""
    attrs = _parse(caption)
    d = detect(image)
    out = {
        "color_acc": float(d.found and d.color == attrs["color"]),
        "shape_acc": float(d.found and d.shape == attrs["shape"]),
        "background_acc": float(d.background == attrs["background"]),
    }
    out["prompt_acc"] = float(all(v == 1.0 for v in out.values()))
    return out


def _line_slope(t: Tensor, v: Tensor) -> float:
    """Least-squares slope of ``v`` against ``t`` (1-D, at least two points)."""
    tc = t - t.mean()
    return float((tc * (v - v.mean())).sum() / tc.square().sum())


def motion_track(detections: list[Detection]) -> tuple[float, float, float] | None:
    """Fitted change over the whole clip of (x, y, log equivalent radius) from the frames where the object was
    found (least-squares lines against clip time [0, 1]); None when fewer than two frames have it or only one
    distinct time is covered."""
    n = len(detections)
    idx = [k for k, d in enumerate(detections) if d.found]
    if len(idx) < 2:
        return None
    t = torch.tensor([k / max(n - 1, 1) for k in idx], dtype=torch.float64)
    xs = torch.tensor([detections[k].x for k in idx], dtype=torch.float64)
    ys = torch.tensor([detections[k].y for k in idx], dtype=torch.float64)
    lr = torch.tensor([math.log(detections[k].radius) for k in idx], dtype=torch.float64)
    return _line_slope(t, xs), _line_slope(t, ys), _line_slope(t, lr)


def classify_motion(detections: list[Detection], size: int = tw.SIZE) -> str:
    """The clip's motion: one of :data:`evaluation.toyworld.MOTIONS`, or ``"static"`` (too little motion, or the
    object found in fewer than two frames). ``size``: the frame side in pixels (travel thresholds scale with it)."""
    fit = motion_track(detections)
    if fit is None:
        return STATIC
    dx, dy, dlog = fit
    travel = tw.TRAVEL * size / tw.SIZE
    move, grow = max(abs(dx), abs(dy)) / travel, abs(dlog) / _LOG_GROW
    if max(move, grow) < STATIC_FRACTION:
        return STATIC
    if grow > move:
        return "growing" if dlog > 0 else "shrinking"
    if abs(dx) >= abs(dy):
        return "moving right" if dx > 0 else "moving left"
    return "moving down" if dy > 0 else "moving up"


def consistency_with_frame0(detections: list[Detection]) -> dict[str, float]:
    """Over frames 1..: fraction found with frame 0's color (``color_consistency``), shape (``shape_consistency``)
    and both (``consistency``); 0 when frame 0 has no object. ``size_change`` = ``mean_t |r_t / r_0 - 1|`` over
    frames where the object is found (NaN if none or frame 0 has none)."""
    d0, rest = detections[0], detections[1:]
    if not rest:
        return {
            "consistency": math.nan,
            "color_consistency": math.nan,
            "shape_consistency": math.nan,
            "size_change": math.nan,
        }
    if not d0.found:
        return {"consistency": 0.0, "color_consistency": 0.0, "shape_consistency": 0.0, "size_change": math.nan}
    color = [d.found and d.color == d0.color for d in rest]
    shape = [d.found and d.shape == d0.shape for d in rest]
    sizes = [abs(d.radius / d0.radius - 1.0) for d in rest if d.found]
    return {
        "consistency": sum(c and s for c, s in zip(color, shape)) / len(rest),
        "color_consistency": sum(color) / len(rest),
        "shape_consistency": sum(shape) / len(rest),
        "size_change": sum(sizes) / len(sizes) if sizes else math.nan,
    }


def _second_difference(a: Detection, b: Detection, c: Detection) -> float:
    """Norm (px) of the second difference of (x, y, equivalent radius) over three consecutive frames."""
    second = [u - 2 * v + w for u, v, w in zip((a.x, a.y, a.radius), (b.x, b.y, b.radius), (c.x, c.y, c.radius))]
    return math.sqrt(sum(s * s for s in second))


def track_jerk(detections: list[Detection]) -> float:
    """Mean norm (px) of the second difference of (x, y, equivalent radius) over consecutive frame triples in which
    the object is found in all three; NaN if there is none. Constant-speed motion gives ~0."""
    values = [
        _second_difference(a, b, c)
        for a, b, c in zip(detections, detections[1:], detections[2:])
        if a.found and b.found and c.found
    ]
    return sum(values) / len(values) if values else math.nan


def frame0_jerk(detections: list[Detection]) -> float:
    """The second difference (px) at frame 1, over frames 0, 1, 2: how far the clip's track breaks where frame 0
    joins the rest. AnimateZero's frame 0 is the step-1 image inserted from outside; a clip whose later frames start
    elsewhere jumps there while moving smoothly after it, which :func:`track_jerk` dilutes over the whole clip.
    Constant-speed motion gives ~0; NaN unless the object is found in all three frames."""
    if len(detections) < 3 or not all(d.found for d in detections[:3]):
        return math.nan
    return _second_difference(*detections[:3])


def centroid_steps(detections: list[Detection]) -> list[float]:
    """Distance (px) the object's centroid moves from each frame to the next (``f - 1`` values; NaN where either frame
    lacks the object). The world's moving clips step 1.6 px a frame (24 px over 15 steps); a jump where frame 0 joins
    the rest shows as a large first step."""
    return [
        math.dist((a.x, a.y), (b.x, b.y)) if a.found and b.found else math.nan
        for a, b in zip(detections, detections[1:])
    ]


def pixel_jerk(video: Tensor) -> float:
    """Mean absolute second difference over time of the pixels, ``mean |x_{t+1} - 2 x_t + x_{t-1}|`` (NaN for
    fewer than three frames). Flicker raises it; smooth motion of a small object keeps it small."""
    video = _check_video(video)
    if video.shape[0] < 3:
        return math.nan
    return float((video[2:] - 2 * video[1:-1] + video[:-2]).abs().mean())


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR (dB, data range 1) of two images of the same shape, capped at ``PSNR_CAP_DB`` for identical ones."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"reference image {tuple(b.shape)} and frame 0 {tuple(a.shape)} differ in size")
    mse = float((a - b).square().mean())
    return PSNR_CAP_DB if mse == 0 else min(10 * math.log10(1.0 / mse), PSNR_CAP_DB)


def score_video(video: Tensor, caption: str | None, reference: Tensor | None = None) -> dict[str, float]:
    """Every toy-world metric of one video ``[f, 3, H, W]`` (keys prefixed ``toyworld_``).

    ``caption``: the prompt, in the world's grammar (:func:`evaluation.toyworld.parse_caption`); None computes only
    the caption-free metrics (consistency, smoothness, fidelity). ``reference``: the step-1 text-to-image picture
    ``[3, H, W]`` (or ``[1, 3, H, W]``): the text-to-image accuracies are measured on it (on frame 0 without one)
    and ``frame0_psnr`` compares frame 0 with it.

    Keys: ``found`` (fraction of frames with an object); ``color_acc shape_acc background_acc prompt_acc``
    (text-to-image, 0/1); ``video_color_acc video_shape_acc`` (fraction of frames whose object has the caption's
    color / shape); ``motion_acc`` (0/1), ``motion_dx motion_dy`` (px over the clip) and ``motion_size_ratio``
    (end/start equivalent radius) from the fitted track; ``consistency color_consistency shape_consistency
    size_change``; ``track_jerk frame0_jerk pixel_jerk``; ``frame0_psnr``.
    """
    video = _check_video(video)
    attrs = _parse(caption) if caption is not None else None
    if reference is not None:
        reference = reference.detach().float().cpu()
        reference = reference[0] if reference.ndim == 4 else reference
    detections = detect_video(video)
    out: dict[str, float] = {"found": sum(d.found for d in detections) / len(detections)}
    if attrs is not None:
        out.update(prompt_accuracy(reference if reference is not None else video[0], caption))
        out["video_color_acc"] = sum(d.found and d.color == attrs["color"] for d in detections) / len(detections)
        out["video_shape_acc"] = sum(d.found and d.shape == attrs["shape"] for d in detections) / len(detections)
        out["motion_acc"] = float(classify_motion(detections, size=video.shape[-1]) == attrs["motion"])
    fit = motion_track(detections)
    out["motion_dx"], out["motion_dy"] = (fit[0], fit[1]) if fit else (math.nan, math.nan)
    out["motion_size_ratio"] = math.exp(fit[2]) if fit else math.nan
    out.update(consistency_with_frame0(detections))
    if attrs is not None and attrs["motion"] in ("growing", "shrinking"):
        out["size_change"] = math.nan  # the size is meant to change
    out["track_jerk"] = track_jerk(detections)
    out["frame0_jerk"] = frame0_jerk(detections)
    out["pixel_jerk"] = pixel_jerk(video)
    if reference is not None:
        out["frame0_psnr"] = psnr(video[0], reference)
    return {f"toyworld_{k}": float(v) for k, v in out.items()}
