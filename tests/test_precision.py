"""fp16 and bf16 end to end on the CPU with the shipped toy world: generate, loop, real-image animation
(``invert_image``, then ``animate``) into a long clip (sliding windows past the motion module's position table). Each
output is finite, its anchor frames equal the image they animate, and it is close to the same call in fp32.

Sizes are the least that still run each path: 2 DDIM steps, 2 frames (3 for the long clip). On this project's CPU
(no AVX-512) PyTorch runs half-precision convolutions on its slow reference path: one 64x64 VAE decode takes about
3.2 s of CPU time in fp16 or bf16 (0.1 s in fp32), so the 9 frames decoded per precision, not the sampling, set this
file's cost: measured 37.7 s (fp16) + 36.9 s (bf16) + 2.4 s (fp32) of CPU time, one thread, on a shared machine at
load 14 (wall 524 s there; a quiet machine's wall time is about the CPU time or less).

The long clip: the toy world's motion module has a 32-position table, so a long clip needs 33 frames, whose decode
alone would take about 100 s per precision here. The table is computed, not stored (the checkpoint holds no
positions), so the test loads the same weights with a 2-position table and animates 3 frames: the anchored sliding
windows of a long clip, on the toy world's weights, in each precision.

Bounds, measured 2026-12-07 on this machine (torch 2.14.1, one thread), each the measured value with a margin:
* anchor frames: max |frame - image| was exactly 0 in both precisions (the anchor's latent is inserted and decoded
  like the image's); bound 1e-3, a quarter of an 8-bit level;
* against fp32, over every clip's pixels in [0, 1]: fp16 max 0.0058, mean 0.00038 (bound 0.02, 0.002); bf16 max
  0.054, mean 0.0055 (bound 0.15, 0.015), the largest on the long clip of the inverted image (inversion runs the
  UNet ``steps`` times more in reduced precision); generate, loop and the image alone: fp16 0.0013 / 0.00014,
  bf16 0.0105 / 0.00105.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from animatezero import toyworld
from animatezero.controls import Controls
from animatezero.pipeline import AnimateZeroPipeline
from models.motion_module import MotionModules

pytestmark = pytest.mark.skipif(not toyworld.available(), reason="toy-world files not installed")

PROMPT = "a red circle moving right on a black background"
STEPS = 2
SHORT_TABLE = 2  # positions of the long-clip pipeline's motion module (the shipped one has 32)
# max |frame - image| over the anchor frames (pixels in [0, 1]); measured: 0 in fp16 and in bf16
FRAME0_BOUND = {torch.float16: 1e-3, torch.bfloat16: 1e-3}
# (max, mean) |half - fp32| over a clip's pixels; measured at most: fp16 (0.0058, 0.00038), bf16 (0.054, 0.0055)
FP32_BOUND = {torch.float16: (0.02, 0.002), torch.bfloat16: (0.15, 0.015)}


def long_clip_pipeline(pipe: AnimateZeroPipeline) -> AnimateZeroPipeline:
    """``pipe``'s networks with its motion module's weights under a :data:`SHORT_TABLE`-position table."""
    config = dataclasses.replace(pipe.motion_module.config, max_positions=SHORT_TABLE)
    motion = MotionModules(config)
    motion.load_state_dict(pipe.motion_module.state_dict())  # strict: the same weights (the table is not stored)
    short = AnimateZeroPipeline(
        pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, motion, dtype=pipe.dtype,
        default_size=pipe.default_size, default_sampling=pipe.default_sampling,
    )  # fmt: skip
    short.progress = False
    return short


def run_all(dtype: torch.dtype) -> dict:
    """Every path once in ``dtype``, from the same seeds: the results, and the seconds (wall, CPU) they took."""
    wall, cpu = time.perf_counter(), time.process_time()
    pipe = AnimateZeroPipeline.toyworld(dtype=dtype)
    pipe.progress = False
    image, video = pipe.generate(PROMPT, steps=STEPS, num_frames=2, seed=0)
    loop = pipe.loop(image, num_frames=2, seed=1)
    square = torch.zeros(3, 64, 64)
    square[0, 20:40, 12:32] = 1.0  # a red square on black, as the world draws one
    inverted = pipe.invert_image(square, PROMPT, steps=STEPS)
    # the inverted image animated into a long clip (one decode fewer per path than animating it twice)
    long = long_clip_pipeline(pipe).animate(inverted, num_frames=SHORT_TABLE + 1, seed=2,
                                            controls=Controls(sliding_windows=True))  # fmt: skip
    seconds = (time.perf_counter() - wall, time.process_time() - cpu)
    return dict(image=image, video=video, loop=loop, inverted=inverted, long=long, seconds=seconds)


@pytest.fixture(scope="module")
def fp32():
    return run_all(torch.float32)


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def half(request):
    return request.param, run_all(request.param)


def anchors(r: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(frame, the image it must equal) for every anchor frame of the runs."""
    image = r["image"].image
    return {
        "generate frame 0": (r["video"].frames[0], image),
        "loop frame 0": (r["loop"].frames[0], image),
        "loop last frame": (r["loop"].frames[-1], image),
        "long clip of the inverted image, frame 0": (r["long"].frames[0], r["inverted"].image),
    }


def clips(r: dict) -> dict[str, torch.Tensor]:
    return {
        "image": r["image"].image[None],
        "generate": r["video"].frames,
        "loop": r["loop"].frames,
        "inverted image": r["inverted"].image[None],
        "long clip of the inverted image": r["long"].frames,
    }


def test_half_precision_runs_every_path_finite_with_exact_anchor_frames(half, fp32):
    dtype, r = half
    print(f"\n{dtype}: {r['seconds'][0]:.1f} s wall, {r['seconds'][1]:.1f} s CPU; fp32 {fp32['seconds'][1]:.1f} s CPU")
    for name, clip in clips(r).items():
        assert clip.dtype == torch.float32 and torch.isfinite(clip).all(), name
    assert r["long"].num_frames == SHORT_TABLE + 1
    for name, (frame, image) in anchors(r).items():
        err = (frame.float() - image.float()).abs().max().item()
        print(f"  {name}: max |frame - image| {err:.3g}")
        assert err <= FRAME0_BOUND[dtype], (name, err)


def test_half_precision_is_close_to_fp32(half, fp32):
    dtype, r = half
    want = clips(fp32)
    for name, clip in clips(r).items():
        diff = (clip.float() - want[name].float()).abs()
        print(f"  {dtype} {name}: max {diff.max().item():.3g} mean {diff.mean().item():.3g}")
        top, mean = FP32_BOUND[dtype]
        assert diff.max().item() <= top and diff.mean().item() <= mean, (name, diff.max().item(), diff.mean().item())
