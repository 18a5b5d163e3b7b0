"""Applications (paper Sec. 6 / project page): real-image animation, interactive generation, text-controlled motion,
loops and two-image interpolation, clip continuation and long clips, on tiny synthetic checkpoints."""

import numpy as np
import pytest
import torch
from PIL import Image

from animatezero.applications import fit_image
from animatezero.controls import Controls
from animatezero.io import load_image
from animatezero.results import psnr

SIZE, STEPS, FRAMES = 64, 2, 4


@pytest.fixture(scope="module")
def image(tiny_pipe):
    return tiny_pipe.text_to_image("a red fox", height=SIZE, width=SIZE, steps=STEPS, seed=5)


def test_fit_image_crops_the_center():
    img = torch.zeros(3, 100, 200)
    img[:, :, 50:150] = 1.0  # a white square in the middle of a wide image
    out = fit_image(img, 64, 64)
    assert out.shape == (3, 64, 64) and out.mean().item() > 0.95  # the crop is the white center
    auto = fit_image(torch.rand(3, 300, 700))  # short side -> 512, sides cropped to multiples of 8
    assert auto.shape == (3, 512, 1192)
    with pytest.raises(ValueError, match="multiple of 8"):
        fit_image(img, 60, 64)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16", "P"])
def test_load_image_modes(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    out = load_image(path)
    assert out.shape == (3, 20, 30) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(bad)


def test_real_image_animation(tiny_pipe, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (75, 100, 4), dtype=np.uint8), "RGBA").save(photo)
    real = tiny_pipe.invert_image(photo, "a photo", height=SIZE, width=SIZE, steps=STEPS)
    assert real.image.shape == (3, SIZE, SIZE) and len(real.trajectory) == STEPS + 1
    fitted = fit_image(load_image(photo, (SIZE, SIZE)), SIZE, SIZE)  # RGBA on white, cropped to the grid
    assert real.info["psnr_db"] == pytest.approx(psnr(real.image, fitted))  # the VAE reconstruction vs the input
    video = tiny_pipe.animate(real, num_frames=FRAMES, seed=0)
    assert (video.frames[0] - real.image).abs().max().item() <= 1e-3


def test_inversion_then_sampling_returns_close(tiny_pipe):
    """Invert a generated image's latent, sample back from the inverted noise: close to the original latent."""
    steps = 10
    gen = tiny_pipe.text_to_image("a boat", height=SIZE, width=SIZE, steps=steps, guidance_scale=1.0, seed=3)
    inverted = tiny_pipe.invert_latent(gen.latent, "a boat", steps=steps, guidance_scale=1.0)
    back = tiny_pipe.text_to_image(
        "a boat", height=SIZE, width=SIZE, steps=steps, guidance_scale=1.0, latents=inverted.trajectory[0]
    )
    err = (back.latent - gen.latent).abs().mean().item() / gen.latent.abs().mean().item()
    noise_err = (inverted.trajectory[0] - gen.trajectory[0]).abs().mean().item() / gen.trajectory[0].abs().mean().item()
    assert err < 0.1, err  # reconstruction relative error
    assert noise_err < 0.2, noise_err  # the inverted noise is near the one that made the image


def test_candidates_and_motion_prompt(tiny_pipe, image):
    cands = tiny_pipe.candidates("a red fox", [1, 2], height=SIZE, width=SIZE, steps=STEPS)
    assert len(cands) == 2 and not torch.equal(cands[0].image, cands[1].image)
    noise = tiny_pipe.noise((1, 4, FRAMES, SIZE // 8, SIZE // 8), 4)
    base = tiny_pipe.animate(image, latents=noise, num_frames=FRAMES)
    smiling = tiny_pipe.animate(image, latents=noise, num_frames=FRAMES, end_prompt="a red fox, smiling")
    assert (smiling.frames[1:] - base.frames[1:]).abs().max().item() > 1e-4
    assert (smiling.frames[0] - image.image).abs().max().item() <= 1e-3


def test_loop_and_interpolation_hit_both_ends(tiny_pipe, image):
    other = tiny_pipe.text_to_image("a blue bird", height=SIZE, width=SIZE, steps=STEPS, seed=9)
    clip = tiny_pipe.interpolate(image, other, num_frames=FRAMES, seed=1)
    assert clip.info["frame0_psnr_db"] >= 60 and clip.info[f"frame{FRAMES - 1}_psnr_db"] >= 60
    assert psnr(clip.frames[-1], other.image) >= 60
    loop = tiny_pipe.loop(image, num_frames=FRAMES, seed=1)
    assert psnr(loop.frames[0], image.image) >= 60 and psnr(loop.frames[-1], image.image) >= 60
    assert (clip.info["mode"], loop.info["mode"]) == ("interpolation", "loop")
    same = tiny_pipe.animate(image, last=image, num_frames=FRAMES, seed=1)  # the dispatch loop() calls
    assert torch.equal(same.frames, loop.frames)
    with pytest.raises(ValueError, match="share steps and size"):
        tiny_pipe.interpolate(image, tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=3, seed=0))


def test_continue_video(tiny_pipe, image):
    first = tiny_pipe.animate(image, num_frames=FRAMES, seed=2)
    steps_seen = []
    longer = tiny_pipe.continue_video(first, num_frames=FRAMES, steps=STEPS, seed=3, callback=steps_seen.append)
    assert longer.num_frames == 2 * FRAMES - 1
    assert [s.i for s in steps_seen] == list(range(STEPS)) and longer.info["mode"] == "animatezero"
    assert torch.equal(longer.frames[:FRAMES], first.frames)
    assert (longer.frames[FRAMES] - longer.frames[FRAMES - 1]).abs().mean().item() < 0.5


def test_long_clip_needs_sliding_windows_and_has_no_seams(tiny_pipe, image):
    f = tiny_pipe.motion_module.config.max_positions + 8  # 40 frames with v2's 32 positions
    with pytest.raises(ValueError, match="exceed the motion module's 32 positions"):
        tiny_pipe.animate(image, num_frames=f, seed=0)
    video = tiny_pipe.animate(image, num_frames=f, seed=0, controls=Controls(sliding_windows=True))
    assert video.frames.shape[0] == f and torch.isfinite(video.frames).all()
    assert (video.frames[0] - image.image).abs().max().item() <= 1e-3
    diffs = (video.frames[1:] - video.frames[:-1]).abs().mean(dim=(1, 2, 3))  # [f-1]
    # the anchored sliding windows move one frame at a time: no frame-to-frame jump stands out
    assert diffs[1:].max().item() <= 3 * diffs[1:].median().item() + 1e-6
