"""The switches of AnimateZero (paper Sec. 4); :mod:`animatezero.method` turns them into processors and latent
insertion.

:class:`Controls` holds every switch and its default (the one place they are defined: the Hydra ``controls`` group is
built on these defaults, see ``configs/__init__.py``); presets give the paper's method, plain AnimateDiff, and the five
rows of the paper's ablation figure (Fig. 6, docs/method.md §8.1). This module imports nothing heavy, so the command
line reads the defaults without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

BLOCKS = ("down", "mid", "up")


@dataclass(frozen=True)
class Controls:
    """Every switch of the image-to-video step. Defaults are the paper's method (best reading, docs/method.md §8).

    Step ranges are fractions of the sampling steps, ``[start, end)``: ``(0.0, 1.0)`` is every step, ``(0.0, 0.5)``
    the first half (the noisier steps).
    """

    # spatial appearance control (Sec. 4.1)
    insert_latent: bool = True  # frame 0's latent := step 1's latent at the same step
    insert_steps: tuple[float, float] = (0.0, 1.0)
    share_kv: bool = True  # spatial self-attention of every frame uses frame 0's keys/values
    kv_mode: str = "replace"  # "replace": Attn(Q_j, K_0, V_0); "concat": Attn(Q_j, [K_0; K_j], [V_0; V_j])
    kv_source: str = (
        "cached"  # "cached": recorded in step 1 (the abstract's "features"); "current": this pass's frame 0
    )
    kv_blocks: tuple[str, ...] = BLOCKS  # which UNet blocks share
    kv_levels: tuple[int, ...] = (0, 1, 2, 3)  # which resolution levels share (0 = full latent resolution)
    kv_steps: tuple[float, float] = (0.0, 1.0)
    # temporal consistency control (Sec. 4.2)
    window_attention: bool = True
    window_blocks: tuple[str, ...] = ("down",)  # encoder windowed; mid and decoder keep global attention
    window_size: int | None = None  # None = the clip length (the paper)
    position_correction: bool = True
    # clips longer than the motion module's position table (24 for v1, 32 for v2/v3): without this they are an error
    sliding_windows: bool = False
    # initial noise of the other frames (the paper does not say; docs/method.md §3): the fraction of its variance
    # taken from step 1's initial noise z_T, x_j = sqrt(s) z_T + sqrt(1 - s) n_j. 0: independent (AnimateDiff)
    noise_share: float = 0.0

    def __post_init__(self):
        if self.kv_mode not in ("replace", "concat"):
            raise ValueError(f"kv_mode must be 'replace' or 'concat', got {self.kv_mode!r}")
        if self.kv_source not in ("cached", "current"):
            raise ValueError(f"kv_source must be 'cached' or 'current', got {self.kv_source!r}")
        for blocks in (self.kv_blocks, self.window_blocks):
            if unknown := set(blocks) - set(BLOCKS):
                raise ValueError(f"unknown UNet blocks {sorted(unknown)}; expected a subset of {BLOCKS}")
        for name in ("insert_steps", "kv_steps"):
            start, end = getattr(self, name)
            if not 0.0 <= start <= end <= 1.0:
                raise ValueError(f"{name} must be fractions with 0 <= start <= end <= 1, got {(start, end)}")
        if not 0.0 <= self.noise_share <= 1.0:
            raise ValueError(f"noise_share must be a fraction in [0, 1], got {self.noise_share}")
        if self.window_size is not None and self.window_size < 1:
            raise ValueError(f"window_size must be >= 1 or None, got {self.window_size}")

    # presets ---------------------------------------------------------------------------------------------------
    @classmethod
    def paper(cls) -> Controls:
        """AnimateZero as described: latent insertion + K/V sharing + positional-corrected window attention."""
        return cls()

    @classmethod
    def animatediff(cls) -> Controls:
        """Every control off: plain AnimateDiff text-to-video (the baseline)."""
        return cls(insert_latent=False, share_kv=False, window_attention=False)

    @classmethod
    def ablation(cls, row: int) -> Controls:
        """Rows of the paper's ablation figure (Fig. 6): 1 AnimateDiff, 2 + latent insertion, 3 + K/V sharing,
        4 + window attention without position correction, 5 + position correction (= :meth:`paper`)."""
        rows = {
            1: cls.animatediff(),
            2: cls(share_kv=False, window_attention=False),
            3: cls(window_attention=False),
            4: cls(position_correction=False),
            5: cls(),
        }
        if row not in rows:
            raise ValueError(f"ablation row must be 1..5, got {row}")
        return rows[row]

    # fields added after results were first saved: at their default they are left out of a run's fingerprint
    # (experiments/sweep.py), so sweeps made before the field existed still resume instead of being redone
    LATER_FIELDS = ("noise_share",)

    @classmethod
    def later_defaults(cls) -> dict:
        """:attr:`LATER_FIELDS` with their defaults: the values a run saved before they existed ran with."""
        return {f.name: f.default for f in fields(cls) if f.name in cls.LATER_FIELDS}

    def fingerprint_fields(self) -> dict:
        """The fields that identify a run's settings (every field, less :attr:`LATER_FIELDS` at their default)."""
        later = self.later_defaults()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.name in later and getattr(self, f.name) == later[f.name])
        }

    PRESETS = ("paper", "animatediff", "ablation1", "ablation2", "ablation3", "ablation4", "ablation5")

    @classmethod
    def preset(cls, name: str, **overrides) -> Controls:
        """A preset by name (see ``PRESETS``), with field overrides."""
        if name.startswith("ablation") and name[8:].isdigit():
            base = cls.ablation(int(name[8:]))
        elif name in ("paper", "animatezero"):
            base = cls.paper()
        elif name == "animatediff":
            base = cls.animatediff()
        else:
            raise ValueError(f"unknown controls preset {name!r}; choose one of {cls.PRESETS}")
        return replace(base, **overrides)

    @property
    def any(self) -> bool:
        """Whether the video depends on a step-1 image (otherwise it is plain text-to-video)."""
        return self.insert_latent or self.share_kv or self.window_attention or self.noise_share > 0


def steps_in_range(timesteps: Sequence[int], fraction: tuple[float, float]) -> frozenset[int]:
    """The timesteps whose step index i satisfies ``start <= i / n < end`` (``end == 1`` includes the last step)."""
    n = len(timesteps)
    start, end = fraction
    return frozenset(t for i, t in enumerate(timesteps) if start * n <= i and (i < end * n or end >= 1.0))
