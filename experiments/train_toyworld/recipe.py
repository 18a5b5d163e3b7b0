"""The toy-world model's recipe: architectures (SD1.5 and AnimateDiff v2 at a small width), stages, default steps,
batches and learning rates, the loss constants, and the training data (random frames and clips of the procedural
world, :mod:`evaluation.toyworld`)."""

from __future__ import annotations

import dataclasses
import random

from torch import Tensor

from evaluation.toyworld import EVAL_SEED_BASE, FRAMES, clip_times, render_batch, sample_scene
from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig

UNET = UNetConfig(model_channels=64, channel_mult=(1, 1, 1, 1), context_dim=32)
VAE = VAEConfig(ch=64, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
CLIP = CLIPTextConfig(width=32, layers=2, heads=1, mlp_dim=128)
MOTION = dataclasses.replace(MotionConfig.for_version(2, UNET.block_channels), layers_per_block=UNET.num_res_blocks)

CHECKPOINT_NAME = "toyworld_sd15.safetensors"
MOTION_NAME = "mm_toyworld_v2.safetensors"
STAGES = ("vae", "decoder", "text", "unet", "refine", "frame0", "motion", "detail")
DEFAULT_STEPS = {
    "vae": 3000,
    "decoder": 2500,
    "text": 400,
    "unet": 5000,
    "refine": 800,
    "frame0": 1000,
    "motion": 18000,  # on the frame0 UNet (see train_motion); the recipe's whole run fits in 2 hours on 2 cores
    "detail": 1200,
}
# frames, frames, captions, frames, frames, frames, clips, frames
DEFAULT_BATCH = {"vae": 8, "decoder": 4, "text": 64, "unet": 32, "refine": 32, "frame0": 32, "motion": 2, "detail": 32}
POOL_CLIPS = 800  # clips encoded once; the UNet and motion stages draw from their latents
DEFAULT_LR = {
    "vae": 5e-4,
    "decoder": 2e-4,
    "text": 1e-3,
    "unet": 5e-4,
    "refine": 1e-4,
    "frame0": 1e-4,
    "motion": 5e-4,
    "detail": 1e-4,
}
HIGH_NOISE_CAP = 10.0  # UNet loss weight: min(1 / alpha_bar_t, 10), see high_noise_loss
MOTION_NOISE_CAP = 100.0  # the motion stage's cap; 10 (the first shipped module's) gave no direction, see train_motion
CAPTION_DROPOUT = 0.1
PROBE_TEMPERATURE = 0.1
EMA_DECAY = 0.998
REFINE_EMA_DECAY = 0.99  # a short stage: its EMA must forget the unrefined start
REFINE_FIRST_FRAME = 0.5  # share of the refine stage's frames that are their clip's frame 0
DETAIL_T_MAX = 400  # the detail stage's timesteps are drawn uniformly below this (alpha_bar_t > 0.35), see train_detail



def frame_batch(rng: random.Random, n: int) -> tuple[list[str], Tensor, list[tuple[float, float]]]:
    """``n`` random single frames of random clips: captions, ``[n, 3, 64, 64]`` in [-1, 1], object centres (x, y)."""
    scenes = [sample_scene(rng.randrange(EVAL_SEED_BASE)) for _ in range(n)]
    ts = [rng.random() for _ in range(n)]
    frames = render_batch(scenes, ts)  # [n, 3, 64, 64]
    return [s.caption for s in scenes], frames * 2 - 1, [s.at(t)[:2] for s, t in zip(scenes, ts)]


def clip_batch(rng: random.Random, n: int) -> tuple[list[str], Tensor]:
    """``n`` random clips (captions, ``[n, 16, 3, 64, 64]`` in [-1, 1])."""
    scenes = [sample_scene(rng.randrange(EVAL_SEED_BASE)) for _ in range(n)]
    clips = render_batch([s for s in scenes for _ in range(FRAMES)], clip_times(FRAMES) * n)  # [n * f, 3, 64, 64]
    return [s.caption for s in scenes], clips.unflatten(0, (n, FRAMES)) * 2 - 1

