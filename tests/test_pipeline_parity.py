"""End-to-end parity with diffusers from the same synthetic files and the same initial latents (fp32, CPU):
our text_to_image against StableDiffusionPipeline and our text_to_video against AnimateDiffPipeline (with the
motion-module GroupNorm patched to the original per-frame statistics, docs/checkpoints.md §4.4), both with the DDIM
scheduler configured as the original AnimateDiff (§4.2)."""

import pytest
import torch

from animatezero.pipeline import AnimateZeroPipeline
from tests import oracle

SIZE, STEPS, FRAMES, TOL = 64, 3, 4, 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    files = oracle.synthetic_checkpoints("tiny", cache_dir=root, log=lambda *a: None)
    config_dir = oracle.write_config_dir(files, root / "configs")
    ours = AnimateZeroPipeline.from_single_files(files.sd15, files.motion)
    return files, config_dir, ours


def test_text_to_image_matches_stable_diffusion_pipeline(setup):

    files, config_dir, ours = setup
    ref_pipe = oracle.build_stable_diffusion(files, config_dir)
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(negative_prompt="", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5)
    with torch.inference_mode():
        ref_latent = ref_pipe("a cat, blinking", latents=noise.clone(), output_type="latent", **kwargs).images
        ref_image = ref_pipe("a cat, blinking", latents=noise.clone(), output_type="pt", **kwargs).images[0]
    mine = ours.text_to_image("a cat, blinking", height=SIZE, width=SIZE, steps=STEPS, latents=noise)
    latent_err = oracle.max_err(mine.latent, ref_latent)
    image_err = oracle.max_err(mine.image, ref_image)
    assert latent_err["rel"] <= TOL, latent_err
    assert image_err["max_abs"] <= TOL, image_err  # images are in [0, 1]


def test_text_to_video_matches_animatediff_pipeline(setup):
    files, config_dir, ours = setup
    ref_pipe = oracle.build_animatediff(files, config_dir)
    assert oracle.patch_motion_norms(ref_pipe.unet) > 0
    noise = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))
    kwargs = dict(
        negative_prompt="", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5
    )
    with torch.inference_mode():
        ref_latents = ref_pipe("a cat, blinking", latents=noise.clone(), output_type="latent", **kwargs).frames
        ref_frames = ref_pipe("a cat, blinking", latents=noise.clone(), output_type="pt", **kwargs).frames[0]
    mine = ours.text_to_video(
        "a cat, blinking", num_frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, latents=noise
    )
    latent_err = oracle.max_err(mine.latents, ref_latents)
    frame_err = oracle.max_err(mine.frames, ref_frames)
    assert latent_err["rel"] <= TOL, latent_err
    assert frame_err["max_abs"] <= TOL, frame_err
    # the patch matters: stock diffusers (joint-frame motion GroupNorm) is measurably different
    oracle.unpatch_motion_norms(ref_pipe.unet)
    with torch.inference_mode():
        stock = ref_pipe("a cat, blinking", latents=noise.clone(), output_type="latent", **kwargs).frames
    assert oracle.max_err(mine.latents, stock)["rel"] > 100 * TOL
