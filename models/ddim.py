"""DDIM (Song et al. 2021, eq. 12) with AnimateDiff's noise schedule, as a pure function over a denoiser.

The schedule is AnimateDiff's (docs/checkpoints.md §2.8): 1000 training steps, *linear* betas 0.00085..0.012 (not SD's
scaled-linear), "leading" timestep spacing with ``steps_offset`` 1 (25 steps -> 961, 921, ..., 41, 1), and
``set_alpha_to_one`` (the last step goes to alpha_bar = 1). This equals diffusers' ``DDIMScheduler`` with those
settings (docs/checkpoints.md §4.2).

The sampler is stateless: ``ddim_sample(denoise, x, schedule, steps, ...)`` calls ``denoise(x, t) -> eps`` once per
step and ``callback(StepInfo)`` after it, in the k-diffusion style; recording a trajectory is a callback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, int], Tensor]  # (x_t, t) -> predicted noise eps, same shape as x_t


@dataclass(frozen=True)
class DDIMSchedule:
    """The diffusion's alpha_bar table and DDIM's timestep selection."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"  # AnimateDiff; "scaled_linear" is SD1.5's own training schedule
    steps_offset: int = 1
    set_alpha_to_one: bool = True

    @cached_property  # read twice per sampling step: computed once per schedule
    def alphas_cumprod(self) -> Tensor:
        """alpha_bar_t for t = 0..T-1, float64 for accuracy (cast where used)."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        elif self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        else:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; expected 'linear' or 'scaled_linear'")
        return torch.cumprod(1.0 - betas, dim=0)

    def timesteps(self, steps: int) -> list[int]:
        """Leading spacing: ``ratio = T // steps``; ``t_i = (steps-1-i) * ratio + steps_offset``."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_train_timesteps}, got {steps}")
        ratio = self.num_train_timesteps // steps
        return [(steps - 1 - i) * ratio + self.steps_offset for i in range(steps)]

    def alpha_bar(self, t: int) -> float:
        """alpha_bar at integer timestep t; t < 0 means the clean end (1.0 with set_alpha_to_one)."""
        if t < 0:
            return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])
        return float(self.alphas_cumprod[t])

    def previous(self, t: int, steps: int) -> int:
        """The timestep DDIM moves to from t (may be negative: the final, clean step)."""
        return t - self.num_train_timesteps // steps

    def add_noise(self, x0: Tensor, noise: Tensor, t: int) -> Tensor:
        """Forward process q(x_t | x_0)."""
        a = self.alpha_bar(t)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise


@dataclass
class StepInfo:
    """What a sampler reports after step ``i`` (from timestep ``t`` to ``t_prev``)."""

    i: int
    t: int
    t_prev: int
    x: Tensor  # the latent that entered the step (x_t)
    eps: Tensor  # the denoiser's prediction
    x0: Tensor  # predicted clean latent
    x_prev: Tensor  # the latent leaving the step (x_{t_prev})


def ddim_step(x: Tensor, eps: Tensor, a_t: float, a_prev: float, eta: float = 0.0, noise: Tensor | None = None):
    """One DDIM update (Song et al. eq. 12). Returns ``(x_prev, x0)``; ``eta > 0`` needs ``noise``."""
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5 if eta > 0 else 0.0
    x_prev = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs a noise tensor")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def ddim_sample(
    denoise: Denoiser,
    x: Tensor,
    schedule: DDIMSchedule,
    steps: int,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """Sample from x_T with ``steps`` DDIM steps and return x_0; ``callback`` sees every step's :class:`StepInfo`.
    A sampler that changes the latents between steps (e.g. inserting known frames) writes its own loop over
    :func:`ddim_step`."""
    timesteps = schedule.timesteps(steps)
    for i, t in enumerate(timesteps):
        t_prev = schedule.previous(t, steps)
        eps = denoise(x, t)
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)
        x_prev, x0 = ddim_step(x, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_prev), eta, noise)
        if callback is not None:
            callback(StepInfo(i=i, t=t, t_prev=t_prev, x=x, eps=eps, x0=x0, x_prev=x_prev))
        x = x_prev
    return x


def ddim_invert(
    denoise: Denoiser,
    x0: Tensor,
    schedule: DDIMSchedule,
    steps: int,
    *,
    callback: Callable[[StepInfo], None] | None = None,
) -> list[Tensor]:
    """Deterministic DDIM inversion: run eq. 12 backwards along the same timesteps that :func:`ddim_sample` uses.

    Returns the trajectory in *sampling* order, ``[x_T, ..., x_{t_1}, x_0]`` (``steps + 1`` latents): entry ``i`` is the
    latent that would enter sampling step ``i``, the last entry is ``x0`` itself. The usual approximation
    eps(x_{t}) ~ eps(x_{t_prev}) is made: the noise is predicted at the less noisy latent with the target timestep.
    """
    timesteps = schedule.timesteps(steps)[::-1]  # 1, 41, ..., 961
    x = x0
    trajectory = [x0]
    for j, t in enumerate(timesteps):
        t_prev = schedule.previous(t, steps)
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        eps = denoise(x, t)
        x0_pred = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        x_next = a_t**0.5 * x0_pred + (1 - a_t) ** 0.5 * eps
        if callback is not None:
            callback(StepInfo(i=steps - 1 - j, t=t, t_prev=t_prev, x=x_next, eps=eps, x0=x0_pred, x_prev=x))
        x = x_next
        trajectory.append(x)
    return trajectory[::-1]
