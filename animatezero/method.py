"""AnimateZero's step 2 as one loop (paper Sec. 4, Fig. 3): for every sampling step of the video (DDIM, LCM or
Euler, :mod:`models.samplers`; the image and the video use the same sampler on the same timesteps),

1. *record* (lockstep only): the image's step ``i`` runs first, with the spatial self-attention layers recording its
   keys/values, and makes the image latent that the next step inserts;
2. *insert* the anchor frames' step-1 latents into the video latents (spatial appearance control, paper Sec. 4.1);
3. *share and window*: the video UNet denoises under the installed processors, which share the anchors' keys/values
   in the spatial self-attention (Sec. 4.1) and restrict the motion modules' temporal attention to windows anchored
   at the first frame (temporal consistency control, Sec. 4.2);
4. the sampler's update (:meth:`models.samplers.Sampler.step`; a stochastic sampler's noise comes from the video's
   own generator, the image's from the image's, so lockstep and the two-step path draw the same streams).

Without lockstep the anchors' latents and keys/values come from their stored step-1 results. Which processors go
where follows the :class:`animatezero.controls.Controls` (:func:`spatial_processors`, :func:`temporal_processors`);
what each one computes is in :mod:`animatezero.processors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from animatezero.controls import Controls, steps_in_range
from animatezero.hooks import installed, spatial_self_attention_layers, temporal_attention_layers
from animatezero.processors import Anchor, FramePatternAttention, KVBank, RecordKV, SharedFirstFrameKV, StepState
from animatezero.windows import FramePattern, anchored_sliding_pattern, bidirectional_window_pattern, window_pattern
from models.ddim import Denoiser, StepInfo
from models.guidance import cfg_denoiser
from models.runner import UNetRunner
from models.samplers import Sampler


def recorders(unet: nn.Module, bank: KVBank | None, state: StepState) -> dict:
    """Step 1's processors: every spatial self-attention layer records its keys/values into ``bank`` at the end of
    each step (paper Sec. 4.1, "latents and their features"); with no bank the layers run plainly (None)."""
    return {n: RecordKV(n, bank, state) if bank is not None else None for n in spatial_self_attention_layers(unet)}


# which processors go where (from the Controls) -------------------------------------------------------------------
def anchor_weights(num_frames: int, anchor_frames: Sequence[int]) -> Tensor | None:
    """How much frame j shares each anchor's keys/values: one anchor -> None (all of it); two anchors at the ends ->
    linear cross-fade ``[1 - j/(f-1), j/(f-1)]`` (our extension for interpolation; docs/method.md §6)."""
    if len(anchor_frames) == 1:
        return None
    if len(anchor_frames) != 2:
        raise ValueError("K/V sharing supports one or two anchor frames")
    alpha = torch.linspace(0, 1, num_frames)[:, None]  # [f, 1]
    return torch.cat([1 - alpha, alpha], dim=1)  # [f, 2]


def spatial_processors(
    controls: Controls,
    unet: nn.Module,
    num_frames: int,
    timesteps: Sequence[int],
    state: StepState,
    anchors: Sequence[Anchor],
) -> dict:
    """K/V-sharing processors for the selected spatial self-attention layers (empty when sharing is off)."""
    if not controls.share_kv:
        return {}
    active = None if controls.kv_steps == (0.0, 1.0) else steps_in_range(timesteps, controls.kv_steps)
    weights = anchor_weights(num_frames, [a.frame for a in anchors])
    if weights is not None:  # made on the UNet's device once, not moved there inside every forward
        weights = weights.to(next(unet.parameters()).device)
    return {
        name: SharedFirstFrameKV(
            name,
            num_frames,
            mode=controls.kv_mode,
            anchors=tuple(anchors),
            weights=weights,
            state=state,
            active_timesteps=active,
        )
        for name, info in spatial_self_attention_layers(unet).items()
        if info.block in controls.kv_blocks and info.level in controls.kv_levels
    }


def temporal_processors(
    controls: Controls,
    motion: nn.Module,
    num_frames: int,
    max_positions: int,
    *,
    two_anchors: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Window-attention processors for the selected motion modules. With ``sliding_windows``, clips longer than the
    position table get, in the other modules, an anchored sliding window (every window keeps frame 0) instead of
    global attention. ``two_anchors``: the window is anchored at both ends (loops, interpolation). ``device`` and
    ``dtype``: where the motion modules run."""
    long_clip = num_frames > max_positions
    if long_clip and not controls.sliding_windows:
        raise ValueError(
            f"{num_frames} frames exceed the motion module's {max_positions} positions; use at most {max_positions} "
            "frames or enable sliding windows (Controls(sliding_windows=True), CLI controls.sliding_windows=true)"
        )
    windowed: FramePattern | None = None
    if controls.window_attention:
        make = bidirectional_window_pattern if two_anchors else window_pattern
        windowed = make(
            num_frames,
            controls.window_size,
            correction=controls.position_correction,
            num_slots=max_positions if long_clip else None,
        )
    sliding = anchored_sliding_pattern(num_frames, max_positions) if long_clip else None
    windowed_proc = FramePatternAttention(windowed, device, dtype) if windowed is not None else None
    sliding_proc = FramePatternAttention(sliding, device, dtype) if sliding is not None else None
    processors = {}
    for name, info in temporal_attention_layers(motion).items():
        processor = (
            windowed_proc if windowed_proc is not None and info.block in controls.window_blocks else sliding_proc
        )
        if processor is not None:
            processors[name] = processor
    return processors


# the loop --------------------------------------------------------------------------------------------------------
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
class LockstepImage:
    """Step 1 sampled alongside step 2: image step ``i`` runs just before video step ``i``, so only one step's
    keys/values are ever held. ``trajectory`` starts as ``[z_T]``; the loop appends each step's result."""

    denoise: Denoiser
    recorders: dict  # spatial self-attention layer -> RecordKV (cached K/V) or None (plain attention)
    trajectory: list[Tensor]
    bank: KVBank | None
    generator: torch.Generator | None = None  # the image's per-step noise (stochastic samplers)


def share_initial_noise(x: Tensor, anchors: Sequence[Anchor], share: float) -> Tensor:
    """The video's initial latents with ``share`` of each frame's noise variance taken from the nearest anchor's
    step-1 initial latent ``z_T``: ``x_j = sqrt(s) z_T + sqrt(1 - s) x_j`` (unit variance kept). The paper does not
    say how the frames other than the first start (docs/method.md §3); ``s = 0`` is AnimateDiff's independent noise,
    ``s = 1`` starts every frame from the image's noise."""
    if not share or not anchors:
        return x
    frames = torch.arange(x.shape[2])
    nearest = (frames[:, None] - torch.tensor([a.frame for a in anchors])[None]).abs().argmin(dim=1)  # [f]
    z = torch.stack([anchors[k].trajectory[0].to(x.device, x.dtype) for k in nearest.tolist()], dim=2)  # [1,4,f,h,w]
    return share**0.5 * z + (1 - share) ** 0.5 * x


def sample_video(
    runner: UNetRunner,
    sampler: Sampler,
    x: Tensor,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    steps: int,
    controls: Controls,
    anchors: list[Anchor],
    *,
    image: LockstepImage | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """``sampler`` over video latents ``x [1, 4, f, h, w]`` under ``controls``; returns the final latents.
    ``generator``: the video's per-step noise (stochastic samplers). ``callback`` sees every video step's
    :class:`models.ddim.StepInfo`."""
    unet, motion = runner.unet, runner.motion
    num_frames = x.shape[2]
    timesteps = sampler.timesteps(steps)
    state = StepState()
    if cond.ndim == 4 and uncond.ndim == 3:  # per-frame prompts: the negative prompt is the same for all frames
        uncond = uncond[:, None].expand(-1, num_frames, -1, -1)
    insert = controls.insert_latent and bool(anchors)
    insert_at = steps_in_range(timesteps, controls.insert_steps) if insert else frozenset()
    insert_final = insert and controls.insert_steps[1] >= 1.0
    kv_anchors = anchors if controls.share_kv else []
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
    x = share_initial_noise(sampler.start(x, steps), anchors, controls.noise_share)

    def insert_anchors(x: Tensor, i: int) -> Tensor:
        x = x.clone()
        for a in anchors:
            x[:, :, a.frame] = a.trajectory[i].to(x.device, x.dtype)
        return x

    with runner.using(unet, motion), installed(unet, sp), installed(motion, tp):
        for i, t in enumerate(timesteps):
            t_prev = sampler.previous(i, timesteps)
            if image is not None:  # 1. the image's step i, recording its keys/values over the video's processors
                if image.bank is not None:
                    image.bank.entries.clear()  # the previous step's keys/values are no longer needed
                with installed(unet, image.recorders):
                    eps = image.denoise(image.trajectory[i], t)
                z = image.trajectory[i]
                noise = sampler.draw_noise(z, i, steps, image.generator)  # the image's own stream
                image.trajectory.append(sampler.step(z, eps, t, t_prev, noise)[0])
            if t in insert_at:  # 2. the anchors' latents at this step
                x = insert_anchors(x, i)
            eps = denoise(x, t)  # 3. the video UNet, sharing keys/values and windowing temporal attention
            x_prev, x0 = sampler.step(x, eps, t, t_prev, sampler.draw_noise(x, i, steps, generator))  # 4. update
            if callback is not None:
                callback(StepInfo(i=i, t=t, t_prev=t_prev, x=x, eps=eps, x0=x0, x_prev=x_prev))
            x = x_prev
    return insert_anchors(x, steps) if insert_final else x
