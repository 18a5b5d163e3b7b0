"""The pipeline's argument checks and seeds, in one place: every public method validates through these before any
network runs, so bad input fails in milliseconds with one error naming the problem and the fix."""

from __future__ import annotations

import math
import numbers
import os

import torch
from torch import Tensor

MIN_SIZE, MAX_SIZE = 64, 2048
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
# Every frame of a clip is sampled at once (sliding windows only change what attention sees), so memory and time grow
# with the clip; past this, a request is refused up front instead of failing on an allocation minutes later.
MAX_FRAMES = 1024


class NonFiniteError(ValueError):
    """Sampling produced NaN or infinite values (damaged weights, extreme guidance or inputs): the frames would be
    black or noise, so no result is returned."""


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (``steps=True``, ``guidance_scale="7"``, ``prompt=None``). A ``TypeError``, and a
    ``ValueError`` too, so the entry points that report bad values in one line (CLI, app) report these alike."""


def whole_number(value, name: str) -> int:
    """``value`` as an ``int``: Python and numpy integers are whole numbers; a bool (``True`` is not 1 step), a float
    (1.5 would be truncated silently) or a string is refused, naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r:.80} ({type(value).__name__})")
    return int(value)


def real_number(value, name: str) -> float:
    """``value`` as a ``float``: Python and numpy numbers; a bool, a string or a tensor is refused, naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fix = f"pass a number, e.g. {name}={value.strip()}" if isinstance(value, str) else "pass a plain number"
        raise ArgumentTypeError(f"{name} must be a number, got {value!r:.80} ({type(value).__name__}); {fix}")
    return float(value)


def check_prompts(allow_none: bool = False, **prompts) -> None:
    """Each keyword (``prompt=..., negative_prompt=...``) is a string; ``None`` too where ``allow_none`` (it means
    "the image's own")."""
    for name, value in prompts.items():
        if not isinstance(value, str) and not (allow_none and value is None):
            fix = "pass '' for none" if value is None else "pass one string (one call per prompt)"
            raise ArgumentTypeError(f"{name} must be a string, got {value!r:.80} ({type(value).__name__}); {fix}")


def check_size(height: int, width: int) -> tuple[int, int]:
    """The requested ``(height, width)`` as ints: multiples of 8 in ``MIN_SIZE..MAX_SIZE``."""
    sides = []
    for name, value in (("height", height), ("width", width)):
        value = whole_number(value, name)
        if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(
                f"{name} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE} pixels, got {value!r} "
                f"(e.g. {max(MIN_SIZE, min(MAX_SIZE, round(value / 64) * 64))})"
            )
        sides.append(value)
    return sides[0], sides[1]


def check_sampling(steps: int, guidance_scale: float) -> tuple[int, float]:
    """``(steps, guidance_scale)`` as ``(int, float)``: 1..1000 DDIM steps, a finite guidance scale >= 0."""
    steps = whole_number(steps, "steps")
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be an integer in 1..1000, got {steps!r}")
    guidance_scale = real_number(guidance_scale, "guidance_scale")
    if not (guidance_scale >= 0 and math.isfinite(guidance_scale)):
        raise ValueError(f"guidance_scale must be >= 0 and finite (1 = no guidance), got {guidance_scale!r}")
    return steps, guidance_scale


def check_frames(num_frames: int, minimum: int = 1) -> int:
    num_frames = whole_number(num_frames, "num_frames")
    if num_frames < minimum:
        raise ValueError(f"num_frames must be an integer >= {minimum}, got {num_frames!r}")
    if num_frames > MAX_FRAMES:
        raise ValueError(
            f"{num_frames} frames are more than the {MAX_FRAMES} one clip may have (all are sampled at once); make a "
            f"longer video in parts (continue_video; CLI extend=N appends N clips)"
        )
    return num_frames


def check_seed(seed: int) -> int:
    """A seed is a whole number in 0..2**64-1 (a float such as 1.5 would be truncated silently, so it is refused);
    returned as an ``int`` (``torch.Generator.manual_seed`` takes no numpy integer)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a whole number in 0..2**64-1, got {seed!r} ({type(seed).__name__})")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} is out of range: use a whole number in 0..2**64-1")
    return int(seed)


def check_finite(x: Tensor, what: str) -> None:
    """Refuse an input tensor holding NaN or infinity, naming it."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contain NaN or infinite values; pass finite numbers")


def new_seed() -> int:
    """A fresh random seed (31 bits, so it is easy to type back in)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def check_latents(latents: Tensor | None, shape: tuple[int, ...], seed: int | None) -> int | None:
    """Check given initial latents (shape, finiteness) or the seed that will make them; returns the seed to use: the
    given one, or a fresh one when neither seed nor latents were given."""
    if seed is not None:
        seed = check_seed(seed)
    if latents is None:
        return seed if seed is not None else new_seed()
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
    check_finite(latents, "latents")
    return seed


def check_anchors(images: list, schedule, guidance_scale: float, cached_kv: bool) -> None:
    """Step-1 results (``ImageResult``) to animate from: made with ``schedule``, sharing steps and size, and, when
    their recorded keys/values are used, with as many guidance branches as the animation."""
    first = images[0]
    for image in images:
        if image.timesteps != schedule.timesteps(image.steps):
            raise ValueError("the image was made with another noise schedule; make it with this pipeline")
        if image.timesteps != first.timesteps or image.latent.shape != first.latent.shape:
            raise ValueError(
                f"anchor images must share steps and size: got {image.steps} steps at {image.height}x{image.width}"
                f" and {first.steps} steps at {first.height}x{first.width}"
            )
    check_sampling(first.steps, guidance_scale)
    if cached_kv and (guidance_scale == 1.0) != (first.guidance_scale == 1.0):
        raise ValueError(
            f"cached keys/values were recorded with guidance {first.guidance_scale}; animate with guidance "
            f"{guidance_scale} changes the number of guidance branches. Use kv_source='current' or the same guidance"
        )
