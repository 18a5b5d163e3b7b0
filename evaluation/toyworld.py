"""The toy world: procedural, captioned clips with known ground truth (a Moving-MNIST for image animators).

One object (a circle, square or triangle, in one of seven saturated colors) moves left / right / up / down, grows
or shrinks over a plain black, gray or white background (never the object's own color). Every clip is 16 frames of
64x64 RGB and is a pure function of its integer seed. Captions follow one grammar::

    a {color} {shape} {motion} on a {background} background
    e.g. "a red circle moving right on a black background", "a cyan triangle growing on a gray background"

The shipped toy-world model (``animatezero/assets/toyworld/``, trained by ``scripts/train_toyworld.py``) learned this
world, so its pictures mean something offline and :mod:`evaluation.toyworld_metrics` can score them analytically.
This module is pure torch: no model, no download.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

SIZE = 64  # pixels, square
FRAMES = 16
SUPERSAMPLE = 4  # anti-aliasing: render at 4x and average-pool

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
    "white": (1.0, 1.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "growing", "shrinking")
# unit displacement per clip (x to the right, y downwards, as in image rows)
DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1), "moving down": (0, 1)}

TRAVEL = 24.0  # pixels travelled over a clip by a moving object
MOVE_SIZE = (7.0, 10.0)  # size range of moving objects (circle radius; other shapes have the same area)
GROW_SIZE = (5.0, 13.0)  # size at the small and large end of growing/shrinking clips
MARGIN = 2.0  # pixels kept free between the object and the border

_CAPTION = re.compile(
    r"^an? (?P<color>\w+) (?P<shape>\w+) (?P<motion>moving \w+|growing|shrinking) on an? (?P<background>\w+) background$"
)


@dataclass(frozen=True)
class Scene:
    """Everything that defines a clip: the caption's four words and the object's start/end geometry."""

    color: str
    shape: str
    motion: str
    background: str
    x0: float  # centre at frame 0, pixels
    y0: float
    x1: float  # centre at the last frame
    y1: float
    s0: float  # size at frame 0 (radius of the equal-area circle)
    s1: float  # size at the last frame

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.motion, self.background)

    def at(self, t: float) -> tuple[float, float, float]:
        """Centre x, y and size at clip time ``t`` in [0, 1] (linear motion)."""
        return (
            self.x0 + t * (self.x1 - self.x0),
            self.y0 + t * (self.y1 - self.y0),
            self.s0 + t * (self.s1 - self.s0),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def caption(color: str, shape: str, motion: str, background: str) -> str:
    return f"a {color} {shape} {motion} on a {background} background"


def parse_caption(text: str) -> dict[str, str] | None:
    """The four attributes of a caption in the grammar (``color``, ``shape``, ``motion``, ``background``), or None
    for text outside it (such prompts still run; they just have no ground truth)."""
    m = _CAPTION.match(text.strip().lower())
    if m is None:
        return None
    d = m.groupdict()
    ok = d["color"] in COLORS and d["shape"] in SHAPES and d["motion"] in MOTIONS and d["background"] in BACKGROUNDS
    return d if ok and d["color"] != d["background"] else None


def all_captions() -> list[str]:
    """Every caption of the world (color != background): 3 x 7 x 3 x 6 - 18 = 360."""
    return [caption(c, s, m, b) for c in COLORS for s in SHAPES for m in MOTIONS for b in BACKGROUNDS if c != b]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _extent(size: float) -> float:
    """Half-extent of any shape of this size (the triangle reaches furthest), for keeping it inside the frame."""
    return 1.45 * size


def scene_for(attrs: dict[str, str], seed: int) -> Scene:
    """The geometry of a clip with the given caption attributes, drawn from ``seed`` (positions, sizes)."""
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    motion = attrs["motion"]
    if motion in DIRECTIONS:
        s = _uniform(g, *MOVE_SIZE)
        lo, hi = _extent(s) + MARGIN, SIZE - _extent(s) - MARGIN
        dx, dy = DIRECTIONS[motion]
        # the moving coordinate leaves room for the whole travel; the other is free
        xa = _uniform(g, lo, hi - TRAVEL) if dx else _uniform(g, lo, hi)
        ya = _uniform(g, lo, hi - TRAVEL) if dy else _uniform(g, lo, hi)
        x0, x1 = (xa, xa + TRAVEL) if dx > 0 else (xa + TRAVEL, xa) if dx < 0 else (xa, xa)
        y0, y1 = (ya, ya + TRAVEL) if dy > 0 else (ya + TRAVEL, ya) if dy < 0 else (ya, ya)
        s0 = s1 = s
    else:
        small, large = _uniform(g, GROW_SIZE[0], GROW_SIZE[0] + 1.5), _uniform(g, GROW_SIZE[1] - 1.5, GROW_SIZE[1])
        lo, hi = _extent(large) + MARGIN, SIZE - _extent(large) - MARGIN
        x0 = x1 = _uniform(g, lo, hi)
        y0 = y1 = _uniform(g, lo, hi)
        s0, s1 = (small, large) if motion == "growing" else (large, small)
    return Scene(attrs["color"], attrs["shape"], motion, attrs["background"], x0, y0, x1, y1, s0, s1)


def sample_scene(seed: int) -> Scene:
    """A random scene of the world, a pure function of ``seed``."""
    g = torch.Generator().manual_seed(int(seed) % (2**63) + 7)
    color = list(COLORS)[int(torch.randint(len(COLORS), (), generator=g))]
    shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=g))]
    motion = MOTIONS[int(torch.randint(len(MOTIONS), (), generator=g))]
    backgrounds = [b for b in BACKGROUNDS if b != color]
    background = backgrounds[int(torch.randint(len(backgrounds), (), generator=g))]
    return scene_for({"color": color, "shape": shape, "motion": motion, "background": background}, seed)


def _mask(shapes: list[str], x: Tensor, y: Tensor, size: Tensor) -> Tensor:
    """Inside-test, per item, of a shape of equal area to a circle of radius ``size``, centred at the origin.

    shapes: ``n`` names; x, y: ``[n, h, w]`` offsets from each centre; size: ``[n, 1, 1]``. Returns bool ``[n, h, w]``.
    """
    circle = x * x + y * y <= size * size
    h = size * (math.sqrt(math.pi) / 2)  # half-side of the square with the circle's area
    square = (x.abs() <= h) & (y.abs() <= h)
    # equilateral triangle pointing up, centred on its centroid: three edges at the inradius
    r_in = size * math.sqrt(4 * math.pi / math.sqrt(3)) / (2 * math.sqrt(3))
    triangle = y <= r_in
    for angle in (math.radians(210), math.radians(330)):  # the slanted edges' outward normals (y points down)
        triangle = triangle & (x * math.cos(angle) + y * math.sin(angle) <= r_in)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape {unknown[0]!r}; expected one of {SHAPES}")
    which = torch.tensor([SHAPES.index(s) for s in shapes]).view(-1, 1, 1)
    return torch.where(which == 0, circle, torch.where(which == 1, square, triangle))


def render_batch(scenes: list[Scene], ts: list[float], size: int = SIZE) -> Tensor:
    """Frames ``[n, 3, size, size]`` in [0, 1]: scene ``k`` at clip time ``ts[k]`` in [0, 1], anti-aliased by
    supersampling; one vectorised pass for the whole batch."""
    geo = torch.tensor([sc.at(t) for sc, t in zip(scenes, ts)], dtype=torch.float32)  # [n, 3]: x, y, size
    scale = size / SIZE
    coords = (torch.arange(size * SUPERSAMPLE, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # output-pixel units
    x = coords.view(1, 1, -1) - geo[:, 0].view(-1, 1, 1) * scale  # [n, 1, W]
    y = coords.view(1, -1, 1) - geo[:, 1].view(-1, 1, 1) * scale  # [n, H, 1]
    x, y = torch.broadcast_tensors(x, y)  # [n, H, W]
    alpha = _mask([sc.shape for sc in scenes], x, y, geo[:, 2].view(-1, 1, 1) * scale).float()
    alpha = torch.nn.functional.avg_pool2d(alpha[:, None], SUPERSAMPLE)  # [n, 1, size, size]
    fg = torch.tensor([COLORS[sc.color] for sc in scenes]).view(-1, 3, 1, 1)
    bg = torch.tensor([BACKGROUNDS[sc.background] for sc in scenes]).view(-1, 3, 1, 1)
    return bg + alpha * (fg - bg)  # [n, 3, size, size]


def render_frame(scene: Scene, t: float, size: int = SIZE) -> Tensor:
    """One frame ``[3, size, size]`` in [0, 1] at clip time ``t`` in [0, 1]."""
    return render_batch([scene], [t], size)[0]


def clip_times(frames: int = FRAMES) -> list[float]:
    """Clip time of each frame: frame k is at k / (frames - 1)."""
    return [k / max(frames - 1, 1) for k in range(frames)]


def render_clip(scene: Scene, frames: int = FRAMES, size: int = SIZE) -> Tensor:
    """The clip ``[frames, 3, size, size]`` in [0, 1]."""
    return render_batch([scene] * frames, clip_times(frames), size)


def sample_clip(seed: int, frames: int = FRAMES) -> tuple[str, Tensor]:
    """(caption, clip ``[frames, 3, 64, 64]``) for ``seed``: the training and evaluation data."""
    scene = sample_scene(seed)
    return scene.caption, render_clip(scene, frames)


# Held-out evaluation set: seeds at or above this never appear in training (training draws below it).
EVAL_SEED_BASE = 1_000_000_000
EVAL_SAMPLING_SEED = 2000  # the sampling seed of held-out pair k is 2000 + k (configs/prompts/toyworld_eval.yaml)


def eval_scenes(n: int, offset: int = 0) -> list[Scene]:
    """``n`` held-out scenes (balanced over motions, colors and shapes by construction of the seed walk)."""
    out = []
    for k in range(offset, offset + n):
        g = torch.Generator().manual_seed(EVAL_SEED_BASE + k)
        color = list(COLORS)[k % len(COLORS)]
        shape = SHAPES[(k // len(COLORS)) % len(SHAPES)]
        motion = MOTIONS[k % len(MOTIONS)]
        backgrounds = [b for b in BACKGROUNDS if b != color]
        background = backgrounds[int(torch.randint(len(backgrounds), (), generator=g))]
        out.append(
            scene_for({"color": color, "shape": shape, "motion": motion, "background": background}, EVAL_SEED_BASE + k)
        )
    return out
