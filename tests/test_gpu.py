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


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_matches_eager(tiny_files, pipes, mode, tmp_path):
    """compile= on CUDA (Inductor's Triton kernels; "reduce-overhead" replays CUDA graphs, whose outputs are
    overwritten by the next replay: the recorded keys/values must have been copied) against eager, fp16."""
    pipe = AnimateZeroPipeline.from_single_files(
        tiny_files["sd15"],
        tiny_files["mm_v2"],
        device="cuda",
        dtype=torch.float16,
        compile=mode,
        compile_cache_dir=tmp_path,
    )
    kwargs = dict(height=SIZE, width=SIZE, steps=STEPS, seed=3, num_frames=FRAMES)
    image, ours = pipe.generate("a cat, blinking", **kwargs)
    _, ref = pipes[torch.float16].generate("a cat, blinking", **kwargs)
    recorded_image = pipe.text_to_image("a cat, blinking", height=SIZE, width=SIZE, steps=STEPS, seed=3, record_kv=True)
    again = pipe.animate(recorded_image, num_frames=FRAMES, seed=3)
    for video in (ours, again):
        err = (video.frames - ref.frames).abs().mean().item()
        print(f"\n[compile={mode}] frames vs eager fp16: mean abs {err:.2e}")
        assert err <= 1e-2
    assert (ours.frames[0] - image.image).abs().max().item() <= 1e-2
    torch._dynamo.reset()
