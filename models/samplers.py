"""Samplers over one noise schedule: DDIM (the paper's), LCM (AnimateLCM) and Euler with trailing spacing
(AnimateDiff-Lightning), as pure functions over a denoiser ``denoise(x, t) -> eps`` with a per-step callback.

All three use AnimateDiff's alpha_bar table (:class:`models.ddim.DDIMSchedule`: linear betas 0.00085..0.012) and keep
the latents in the variance-preserving form ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` that the UNet sees, so a
trajectory recorded by one step-1 image means the same thing to every sampler. What differs (docs/fewstep.md §1):

* **timesteps** -- DDIM: "leading" spacing with offset 1 (25 steps: 961 ... 1); LCM: ``steps`` of the 50 distillation
  timesteps 999, 979, ..., 19 taken at evenly spaced indices (4 steps: 999, 759, 499, 259); Euler: "trailing" spacing
  (4 steps: 999, 749, 499, 249);
* **the update** -- DDIM eq. 12 (eta 0); LCM's consistency function ``f(x, t) = c_skip(t) x + c_out(t) x0(x, t)``
  followed, except after the last step, by fresh noise to the next timestep (Luo et al. 2023, Alg. 3); Euler's step on
  the probability-flow ODE in ``sigma = sqrt((1 - a) / a)``: ``x/sqrt(a)`` moves by ``(sigma' - sigma) eps``.

These equal diffusers' ``DDIMScheduler`` (AnimateDiff settings), ``LCMScheduler(beta_schedule="linear")`` and
``EulerDiscreteScheduler(timestep_spacing="trailing", beta_schedule="linear")`` given the same initial latents and,
for LCM, the same per-step noise (tests/test_samplers.py). Euler with eps-prediction is DDIM (eta 0) written in
sigma: the two differ only in the timesteps they visit.

A sampler that changes the latents between steps (AnimateZero's latent insertion) writes its own loop over
:meth:`Sampler.step`; :func:`sample` is that loop with nothing inserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from models.ddim import DDIMSchedule, Denoiser, StepInfo, ddim_step


@dataclass(frozen=True)
class Sampler:
    """Timestep selection and the one-step update over ``schedule``'s alpha_bar table. ``previous`` may return a
    negative timestep: the clean end (alpha_bar = 1)."""

    schedule: DDIMSchedule = field(default_factory=DDIMSchedule)
    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False  # draws fresh noise between steps: not invertible

    def timesteps(self, steps: int) -> list[int]:
        raise NotImplementedError

    def previous(self, i: int, timesteps: list[int]) -> int:
        """The timestep step ``i`` moves to: the next one, or -1 (clean) after the last."""
        return timesteps[i + 1] if i + 1 < len(timesteps) else -1

    def needs_noise(self, i: int, steps: int) -> bool:
        """Whether step ``i`` of ``steps`` draws noise (and so takes ``noise=`` in :meth:`step`)."""
        return False

    def start(self, noise: Tensor, steps: int) -> Tensor:
        """The latent entering the first step, from unit-variance initial noise (``latents=``): the noise itself
        except where a sampler scales it (:meth:`Euler.start`)."""
        return noise

    def step(self, x: Tensor, eps: Tensor, t: int, t_prev: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One update from ``x_t`` with the denoiser's ``eps``: ``(x_{t_prev}, x0)`` (x0: the prediction the step
        moves towards)."""
        raise NotImplementedError

    def draw_noise(self, x: Tensor, i: int, steps: int, generator: torch.Generator | None) -> Tensor | None:
        """The noise step ``i`` needs (None for deterministic steps), drawn in float32 from ``generator`` (a CPU
        generator makes a seed mean the same noise on every device) and moved to ``x``'s device and dtype."""
        if not self.needs_noise(i, steps):
            return None
        if generator is None:
            raise ValueError(f"the {self.name} sampler draws noise at every step but one: pass a seeded generator")
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


@dataclass(frozen=True)
class DDIM(Sampler):
    """DDIM, eta 0 (Song et al. 2021, eq. 12), on AnimateDiff's leading timesteps (models/ddim.py)."""

    name: ClassVar[str] = "ddim"

    def timesteps(self, steps: int) -> list[int]:
        return self.schedule.timesteps(steps)

    def previous(self, i: int, timesteps: list[int]) -> int:
        return self.schedule.previous(timesteps[i], len(timesteps))

    def step(self, x, eps, t, t_prev, noise=None):
        return ddim_step(x, eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev))


@dataclass(frozen=True)
class LCM(Sampler):
    """Latent consistency model sampling (Luo et al. 2023, Alg. 3) as AnimateLCM runs it (diffusers ``LCMScheduler``
    with linear betas): ``original_steps`` distillation timesteps, boundary-condition scalings with
    ``sigma_data = 0.5`` and ``timestep_scaling = 10``, and fresh noise after every step but the last."""

    name: ClassVar[str] = "lcm"
    stochastic: ClassVar[bool] = True
    original_steps: int = 50
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5

    def timesteps(self, steps: int) -> list[int]:
        if not 1 <= steps <= self.original_steps:
            raise ValueError(f"LCM takes 1..{self.original_steps} steps (its distillation schedule), got {steps}")
        k = self.schedule.num_train_timesteps // self.original_steps
        origin = [(j + 1) * k - 1 for j in range(self.original_steps)][::-1]  # 999, 979, ..., 19
        picks = np.floor(np.linspace(0, self.original_steps, num=steps, endpoint=False)).astype(np.int64)
        return [origin[j] for j in picks.tolist()]

    def needs_noise(self, i: int, steps: int) -> bool:
        return i < steps - 1

    def scalings(self, t: int) -> tuple[float, float]:
        """``(c_skip, c_out)`` at timestep t: ``c_skip = s^2 / (u^2 + s^2)``, ``c_out = u / sqrt(u^2 + s^2)`` with
        ``u = timestep_scaling * t``, ``s = sigma_data`` (so c_skip -> 1, c_out -> 0 as t -> 0)."""
        u, s = t * self.timestep_scaling, self.sigma_data
        return s**2 / (u**2 + s**2), u / (u**2 + s**2) ** 0.5

    def step(self, x, eps, t, t_prev, noise=None):
        a_t = self.schedule.alpha_bar(t)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        c_skip, c_out = self.scalings(t)
        denoised = c_out * x0 + c_skip * x
        if t_prev < 0:  # the last step returns the consistency function's output
            return denoised, denoised
        if noise is None:
            raise ValueError("an LCM step before the last needs noise")
        a_prev = self.schedule.alpha_bar(t_prev)
        return a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * noise, denoised


@dataclass(frozen=True)
class Euler(Sampler):
    """Euler on the probability-flow ODE (Karras et al. 2022, eq. 7 with ``sigma(t) = t``) with "trailing" timestep
    spacing, as AnimateDiff-Lightning runs it (diffusers ``EulerDiscreteScheduler``, no churn, final sigma 0).
    In sigma form ``y = x / sqrt(a)`` moves by ``(sigma' - sigma) eps``; the latents stay in the UNet's form ``x``."""

    name: ClassVar[str] = "euler"

    def timesteps(self, steps: int) -> list[int]:
        n = self.schedule.num_train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in 1..{n}, got {steps}")
        return [int(t) for t in np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1]

    def start(self, noise: Tensor, steps: int) -> Tensor:
        """diffusers starts trailing-spaced Euler from ``noise * sigma_max`` in sigma form (its ``init_noise_sigma``
        is ``sigma_max``, not ``sqrt(sigma_max^2 + 1)``, for "trailing"), i.e. ``sqrt(1 - a_T) * noise`` here."""
        return noise * (1 - self.schedule.alpha_bar(self.timesteps(steps)[0])) ** 0.5

    def sigma(self, t: int) -> float:
        a = self.schedule.alpha_bar(t)
        return ((1 - a) / a) ** 0.5

    def step(self, x, eps, t, t_prev, noise=None):
        a_t, a_prev = self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev)
        y = x / a_t**0.5  # sigma form: y = x0 + sigma eps
        x0 = y - self.sigma(t) * eps
        y_prev = y + ((self.sigma(t_prev) if t_prev >= 0 else 0.0) - self.sigma(t)) * eps
        return y_prev * a_prev**0.5, x0


SAMPLERS: dict[str, type[Sampler]] = {"ddim": DDIM, "lcm": LCM, "euler": Euler}


def get_sampler(name: str | Sampler, schedule: DDIMSchedule | None = None) -> Sampler:
    """The sampler called ``name`` ("ddim", "lcm", "euler") over ``schedule`` (default: AnimateDiff's); a
    :class:`Sampler` is returned as it is."""
    if isinstance(name, Sampler):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)} (e.g. sampler='lcm')")
    return SAMPLERS[name](schedule or DDIMSchedule())


def sample(
    denoise: Denoiser,
    x: Tensor,
    sampler: Sampler,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Sample from initial noise ``x`` (:meth:`Sampler.start` makes x_T of it) with ``steps`` steps of ``sampler`` and
    return the final latent; ``callback`` sees every step's :class:`models.ddim.StepInfo`. A stochastic sampler draws
    its per-step noise from ``generator``."""
    timesteps = sampler.timesteps(steps)
    x = sampler.start(x, steps)
    for i, t in enumerate(timesteps):
        t_prev = sampler.previous(i, timesteps)
        eps = denoise(x, t)
        x_prev, x0 = sampler.step(x, eps, t, t_prev, sampler.draw_noise(x, i, steps, generator))
        if callback is not None:
            callback(StepInfo(i=i, t=t, t_prev=t_prev, x=x, eps=eps, x0=x0, x_prev=x_prev))
        x = x_prev
    return x


def check_invertible(sampler: Sampler) -> None:
    """Refuse inversion with a stochastic sampler, before any work: its trajectory depends on noise drawn between
    steps, so no deterministic path leads from a clean latent back to the x_T that would reproduce it."""
    if sampler.stochastic:
        raise ValueError(
            f"the {sampler.name} sampler draws fresh noise at every step, so a real image (or a clip's last frame) "
            "cannot be inverted into a trajectory it would retrace; invert and animate with sampler='ddim' or "
            "sampler='euler' (deterministic) instead"
        )


def invert(
    denoise: Denoiser,
    x0: Tensor,
    sampler: Sampler,
    steps: int,
    *,
    callback: Callable[[StepInfo], None] | None = None,
) -> list[Tensor]:
    """Deterministic inversion along ``sampler``'s timesteps (DDIM's or Euler's: the same ODE step, run backwards
    with the usual eps(x_t) ~ eps(x_{t_prev}) approximation); equals :func:`models.ddim.ddim_invert` for DDIM.
    Returns the trajectory in sampling order ``[x_T, ..., x_0]`` (``steps + 1`` latents). Stochastic samplers are
    refused (:func:`check_invertible`)."""
    check_invertible(sampler)
    timesteps = sampler.timesteps(steps)
    schedule = sampler.schedule
    x, trajectory = x0, [x0]
    for i in reversed(range(steps)):
        t, t_prev = timesteps[i], sampler.previous(i, timesteps)
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        eps = denoise(x, t)
        x0_pred = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        x_next = a_t**0.5 * x0_pred + (1 - a_t) ** 0.5 * eps
        if callback is not None:
            callback(StepInfo(i=i, t=t, t_prev=t_prev, x=x_next, eps=eps, x0=x0_pred, x_prev=x))
        x = x_next
        trajectory.append(x)
    return trajectory[::-1]
