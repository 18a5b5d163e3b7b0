"""AnimateZero's step 2 as one loop (paper Sec. 4, Fig. 3): for every DDIM step of the video,

1. *record* (lockstep only): the image's step ``i`` runs first, with the spatial self-attention layers recording its
   keys/values, and makes the image latent that the next step inserts;
2. *insert* the anchor frames' step-1 latents into the video latents (spatial appearance control, paper Sec. 4.1);
3. *share and window*: the video UNet denoises under the installed processors, which share the anchors' keys/values
   in the spatial self-attention (Sec. 4.1) and restrict the motion modules' temporal attention to windows anchored
   at the first frame (temporal consistency control, Sec. 4.2);
4. the DDIM update (:func:`models.ddim.ddim_step`).

Without lockstep the anchors' latents and keys/values come from their stored step-1 results. Which processors go
where is decided in :mod:`animatezero.controls`; what each one computes is in :mod:`animatezero.processors`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from torch import Tensor

from animatezero.controls import Controls, spatial_processors, steps_in_range, temporal_processors
from animatezero.hooks import installed
from animatezero.processors import Anchor, KVBank, StepState
from models.ddim import DDIMSchedule, Denoiser, StepInfo, ddim_step
from models.guidance import cfg_denoiser
from models.runner import UNetRunner


def stepped_denoiser(model: UNetRunner, cond: Tensor, uncond: Tensor, scale: float, state: StepState) -> Denoiser:
    """Guided noise prediction; the processors subscribed to ``state`` do their per-step work around each call."""
    guided = cfg_denoiser(model, cond, uncond, scale)

    def denoise(x: Tensor, t: int) -> Tensor:
        state.begin(t)
        eps = guided(x, t)
        state.end()
        return eps

    return denoise


@dataclass
class AnchorFrame:
    """A video frame that reproduces a step-1 image: its latents are inserted and its keys/values shared."""

    frame: int
    trajectory: list[Tensor]  # latent entering each sampling step, then z_0 (in lockstep: grows step by step)
    kv: KVBank | None  # recorded keys/values (kv_source="cached"); None: taken from the current pass


@dataclass
class LockstepImage:
    """Step 1 sampled alongside step 2: image step ``i`` runs just before video step ``i``, so only one step's
    keys/values are ever held. ``trajectory`` starts as ``[z_T]``; the loop appends each step's result."""

    denoise: Denoiser
    recorders: dict  # spatial self-attention layer -> RecordKV (cached K/V) or None (plain attention)
    trajectory: list[Tensor]
    bank: KVBank | None


def sample_video(
    runner: UNetRunner,
    schedule: DDIMSchedule,
    x: Tensor,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    steps: int,
    controls: Controls,
    anchors: list[AnchorFrame],
    *,
    image: LockstepImage | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """DDIM over video latents ``x [1, 4, f, h, w]`` under ``controls``; returns the final latents. ``callback`` sees
    every video step's :class:`models.ddim.StepInfo`."""
    unet, motion = runner.unet, runner.motion
    num_frames = x.shape[2]
    timesteps = schedule.timesteps(steps)
    state = StepState()
    if cond.ndim == 4 and uncond.ndim == 3:  # per-frame prompts: the negative prompt is the same for all frames
        uncond = uncond[:, None].expand(-1, num_frames, -1, -1)
    insert = controls.insert_latent and bool(anchors)
    insert_at = steps_in_range(timesteps, controls.insert_steps) if insert else frozenset()
    insert_final = insert and controls.insert_steps[1] >= 1.0
    kv_anchors = [Anchor(a.frame, a.kv) for a in anchors] if controls.share_kv else []
    sp = spatial_processors(controls, unet, num_frames, timesteps, state, kv_anchors) if kv_anchors else {}
    tp = temporal_processors(
        controls,
        motion,
        num_frames,
        motion.config.max_positions,
        two_anchors=len(anchors) == 2,
        device=x.device,
        dtype=x.dtype,
    )
    denoise = stepped_denoiser(runner, cond, uncond, guidance_scale, state)

    def insert_anchors(x: Tensor, i: int) -> Tensor:
        x = x.clone()
        for a in anchors:
            x[:, :, a.frame] = a.trajectory[i].to(x.device, x.dtype)
        return x

    with ExitStack() as stack:
        stack.enter_context(runner.using(unet, motion))
        stack.enter_context(installed(unet, sp))
        stack.enter_context(installed(motion, tp))
        for i, t in enumerate(timesteps):
            t_prev = schedule.previous(t, steps)
            a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
            if image is not None:  # 1. the image's step i, recording its keys/values over the video's processors
                if image.bank is not None:
                    image.bank.entries.clear()  # the previous step's keys/values are no longer needed
                with installed(unet, image.recorders):
                    eps = image.denoise(image.trajectory[i], t)
                image.trajectory.append(ddim_step(image.trajectory[i], eps, a_t, a_prev)[0])
            if t in insert_at:  # 2. the anchors' latents at this step
                x = insert_anchors(x, i)
            eps = denoise(x, t)  # 3. the video UNet, sharing keys/values and windowing temporal attention
            x_prev, x0 = ddim_step(x, eps, a_t, a_prev)  # 4. DDIM
            if callback is not None:
                callback(StepInfo(i=i, t=t, t_prev=t_prev, x=x, eps=eps, x0=x0, x_prev=x_prev))
            x = x_prev
    return insert_anchors(x, steps) if insert_final else x
