"""The shipped toy-world model (animatezero/assets/toyworld): ordinary files that the ordinary loaders read, the same
frames as diffusers/transformers loading the same files, and pictures that mean what their prompt says.

The meaning thresholds sit below what the shipped model measured on these exact prompts and seeds (see README "Toy
world"), with a margin; the runs are deterministic (fixed seeds, CPU, fp32).
"""

import subprocess
import sys

import pytest
import torch

from animatezero import toyworld
from animatezero.controls import Controls
from animatezero.pipeline import AnimateZeroPipeline
from evaluation import toyworld_metrics as metrics
from evaluation.toyworld import MOTIONS, eval_scenes
from models.families import detect_family, detect_motion_version
from models.readers import read_state_dict
from tests import oracle

STEPS = 10  # DDIM steps for the meaning checks (the toy world needs few)
MAX_BYTES = 20 * 2**20


@pytest.fixture(scope="module")
def pipe():
    p = AnimateZeroPipeline.toyworld()
    p.progress = False
    return p


def test_shipped_files_are_small_ordinary_checkpoints():
    checkpoint, motion = toyworld.files(verify=True)  # SHA-256 as recorded in the manifest
    assert checkpoint.stat().st_size + motion.stat().st_size <= MAX_BYTES
    sd = read_state_dict(checkpoint)
    assert detect_family(sd) == "sd15"
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert detect_motion_version(read_state_dict(motion))[0] == 2


def test_same_frames_as_diffusers(pipe, tmp_path):
    """diffusers' AnimateDiffPipeline and StableDiffusionPipeline (with transformers' CLIP) loading the same files."""
    import diffusers

    files = oracle.SyntheticFiles(
        *toyworld.files(verify=False),
        pipe.unet.config,
        pipe.vae.cfg,
        pipe.text_encoder.cfg,
        pipe.motion_module.config,
    )
    config_dir = oracle.write_config_dir(files, tmp_path / "configs")
    ref = oracle.build_animatediff(files, config_dir)
    oracle.patch_motion_norms(ref.unet)
    prompt = "a red circle moving right on a black background"
    noise = torch.randn(1, 4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(negative_prompt="", num_frames=16, height=64, width=64, num_inference_steps=3, guidance_scale=5.0)
    with torch.inference_mode():
        ref_frames = ref(prompt, latents=noise.clone(), output_type="pt", **kwargs).frames[0]
    mine = pipe.text_to_video(prompt, num_frames=16, steps=3, guidance_scale=5.0, latents=noise)
    assert oracle.max_err(mine.frames, ref_frames)["max_abs"] <= 1e-4

    sd = diffusers.StableDiffusionPipeline(
        vae=ref.vae,
        text_encoder=ref.text_encoder,
        tokenizer=ref.tokenizer,
        unet=oracle.load_unet2d(files, config_dir),
        scheduler=oracle.ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    z = noise[:, :, 0]
    with torch.inference_mode():
        ref_image = sd(
            prompt, latents=z.clone(), output_type="pt", height=64, width=64, num_inference_steps=3, guidance_scale=5.0
        ).images[0]
    mine_image = pipe.text_to_image(prompt, steps=3, guidance_scale=5.0, latents=z)
    assert oracle.max_err(mine_image.image, ref_image)["max_abs"] <= 1e-4


def test_text_to_image_draws_one_object_on_a_plain_background(pipe):
    """Every held-out prompt gives a picture in which the detector finds exactly the world's kind of content: one
    object on a plain background (random weights give none). The shipped model does not yet follow the color and
    shape words above chance (README "Toy world"), so those are measured by the ablation, not asserted here."""
    for k, s in enumerate(eval_scenes(12)):
        image = pipe.text_to_image(s.caption, steps=STEPS, seed=k).image
        assert metrics.detect(image).found, s.caption


def test_animatezero_keeps_the_image_and_an_object_in_every_frame(pipe):
    """Frame 0 is the step-1 image (paper Sec. 4.1), and the object is found in (nearly) every frame."""
    for k, s in enumerate(eval_scenes(len(MOTIONS))):
        image, video = pipe.generate(s.caption, steps=STEPS, seed=k, controls=Controls.paper())
        assert (video.frames[0] - image.image).abs().max() <= 1e-5
        score = metrics.score_video(video.frames, s.caption, reference=image.image)
        assert score["toyworld_found"] >= FOUND_MIN, (s.caption, score["toyworld_found"])


def test_offline_demo_command(tmp_path):
    """The README's offline demo: the console entry point with model=toyworld writes the image and a clip whose
    frame 0 is that image, with the object in every frame."""
    out = tmp_path / "run"
    prompt = "a red circle moving right on a black background"
    cmd = [sys.executable, "-m", "experiments.generate", "model=toyworld", f"prompt={prompt}", f"out_dir={out}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from evaluation.io import read_frame_folder, read_image

    frames = read_frame_folder(out / "frames")
    assert frames.shape == (16, 3, 64, 64)
    assert (frames[0] - read_image(out / "image.png")).abs().max() <= 1 / 255
    assert metrics.score_video(frames, prompt)["toyworld_found"] >= FOUND_MIN


# measured on the shipped model: objects found in 99.6-100% of the frames of every ablation row (448 clips, README
# "Toy world"), never below 15 of 16 frames in one clip
FOUND_MIN = 0.9
