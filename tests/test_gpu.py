"""Reduced-precision CUDA paths (skipped without a GPU): the first-frame promise in fp16 and the fast path against
fp32, on the tiny synthetic checkpoints. Full-size figures: scripts/parity_full.py and scripts/benchmark.py."""

import pytest
import torch

from animatezero import AnimateZeroPipeline, Controls

pytestmark = pytest.mark.gpu
SIZE, STEPS, FRAMES = 64, 4, 8


@pytest.fixture(scope="module")
def pipes(tiny_files):
    load = AnimateZeroPipeline.from_single_files
    return {
        dtype: load(tiny_files["sd15"], tiny_files["mm_v2"], device="cuda", dtype=dtype)
        for dtype in (torch.float32, torch.float16, torch.bfloat16)
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_first_frame_promise_in_reduced_precision(pipes, dtype):
    pipe = pipes[dtype]
    image, video = pipe.generate("a cat, blinking", height=SIZE, width=SIZE, steps=STEPS, seed=3, num_frames=FRAMES)
    err = (video.frames[0] - image.image).abs().max().item()
    print(f"\n[{dtype}] frame 0 vs image: max abs {err:.2e}")
    assert err <= 1e-2  # the same latent decoded twice; only batched-kernel rounding differs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_path_close_to_fp32(pipes, dtype):
    kwargs = dict(height=SIZE, width=SIZE, steps=STEPS, seed=3, num_frames=FRAMES, controls=Controls())
    _, ref = pipes[torch.float32].generate("a cat, blinking", **kwargs)
    _, low = pipes[dtype].generate("a cat, blinking", **kwargs)
    mean_err = (low.frames - ref.frames).abs().mean().item()
    print(f"\n[{dtype}] frames vs fp32: mean abs {mean_err:.2e}")
    assert mean_err <= 3e-2
