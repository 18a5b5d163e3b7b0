"""AnimateZero under every sampler (DDIM, LCM, Euler; docs/fewstep.md §3) on the tiny synthetic models: the first
frame equals the step-1 image, lockstep equals the two-step path bit for bit (LCM's per-step noise included), each
control (window attention, K/V sharing), loops, interpolation, inversion and long clips work or are refused up front
with the reason, and guidance 1 runs one branch."""

import dataclasses

import pytest
import torch

from animatezero.controls import Controls
from animatezero.pipeline import AnimateZeroPipeline
from animatezero.results import psnr

SIZE, STEPS, FRAMES = 64, 3, 4
SAMPLERS = ["ddim", "lcm", "euler"]
EXACT = 1e-5  # fp32: frame 0 against the step-1 image


class UNetCalls:
    """Counts UNet forwards and their batch sizes (a forward pre-hook; removed on exit)."""

    def __init__(self, unet):
        self.unet, self.batches = unet, []

    def __enter__(self):
        # (guidance branches, 4-D image or 5-D video latents) of each call
        self.handle = self.unet.register_forward_pre_hook(
            lambda m, args: self.batches.append((args[0].shape[0], args[0].ndim))
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def kwargs(sampler, **more):
    return dict(height=SIZE, width=SIZE, steps=STEPS, sampler=sampler, **more)


@pytest.fixture(scope="module")
def images(tiny_pipe):
    return {s: tiny_pipe.text_to_image("a cat, blinking", record_kv=True, **kwargs(s, seed=7)) for s in SAMPLERS}


def first_frame_exact(video, image, frame=0):
    assert torch.equal(video.latents[:, :, frame], image.latent)
    assert (video.frames[frame] - image.image).abs().max().item() <= EXACT


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_image_records_its_sampler(images, sampler):
    image = images[sampler]
    assert image.info["sampler"] == sampler and len(image.trajectory) == STEPS + 1
    others = [images[s].latent for s in SAMPLERS if s != sampler]
    assert all((image.latent - o).abs().max().item() > 1e-3 for o in others)  # the sampler made a difference


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("controls", [Controls.paper(), Controls(kv_source="current")], ids=["cached", "current"])
def test_lockstep_equals_two_step_and_frame0_is_the_image(tiny_pipe, sampler, controls):
    image, video = tiny_pipe.generate(
        "a cat, blinking", num_frames=FRAMES, controls=controls, **kwargs(sampler, seed=21)
    )
    ref_image = tiny_pipe.text_to_image("a cat, blinking", record_kv=True, **kwargs(sampler, seed=21))
    ref_video = tiny_pipe.animate(ref_image, num_frames=FRAMES, seed=21, controls=controls)
    assert all(torch.equal(a, b) for a, b in zip(image.trajectory, ref_image.trajectory, strict=True))
    assert torch.equal(video.latents, ref_video.latents) and torch.equal(video.frames, ref_video.frames)
    first_frame_exact(video, image)
    first_frame_exact(ref_video, ref_image)
    if sampler == "lcm":  # the per-step noise is the seed's: another video seed, another clip (frame 0 kept)
        other = tiny_pipe.animate(ref_image, num_frames=FRAMES, seed=22, controls=controls)
        assert (other.latents[:, :, 1:] - video.latents[:, :, 1:]).abs().max().item() > 1e-3
        first_frame_exact(other, ref_image)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "change",
    [dict(share_kv=False), dict(window_attention=False), dict(insert_latent=False)],
    ids=["window_only", "kv_only", "no_insertion"],
)
def test_each_control_acts_under_every_sampler(tiny_pipe, images, sampler, change):
    """Window attention alone and K/V sharing alone each change the clip (against all controls off) and keep frame 0
    exact; without latent insertion frame 0 is no longer the image (so the exactness comes from insertion)."""
    image = images[sampler]
    noise = tiny_pipe.noise((1, 4, FRAMES, SIZE // 8, SIZE // 8), seed=11)
    off = tiny_pipe.animate(image, latents=noise, seed=5, num_frames=FRAMES, controls=Controls.animatediff())
    video = tiny_pipe.animate(
        image, latents=noise, seed=5, num_frames=FRAMES, controls=dataclasses.replace(Controls.paper(), **change)
    )
    assert (video.latents[:, :, 1:] - off.latents[:, :, 1:]).abs().max().item() > 1e-4
    if change.get("insert_latent") is False:
        assert (video.latents[:, :, 0] - image.latent).abs().max().item() > 1e-3
    else:
        first_frame_exact(video, image)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_loop_and_interpolation_hit_both_ends(tiny_pipe, images, sampler):
    image = images[sampler]
    other = tiny_pipe.text_to_image("a blue bird", **kwargs(sampler, seed=9))
    clip = tiny_pipe.interpolate(image, other, num_frames=FRAMES, seed=1)
    first_frame_exact(clip, image)
    first_frame_exact(clip, other, frame=FRAMES - 1)
    loop = tiny_pipe.loop(image, num_frames=FRAMES, seed=1)
    first_frame_exact(loop, image)
    first_frame_exact(loop, image, frame=FRAMES - 1)


def test_anchors_from_different_samplers_are_refused(tiny_pipe, images):
    with pytest.raises(ValueError, match="different samplers"):
        tiny_pipe.interpolate(images["ddim"], images["lcm"], num_frames=FRAMES)
    # LCM and Euler at one step visit the same timestep (999): the sampler, not the timesteps, tells them apart
    one = [tiny_pipe.text_to_image("x", **{**kwargs(s, seed=0), "steps": 1}) for s in ("lcm", "euler")]
    assert one[0].timesteps == one[1].timesteps == [999]
    with pytest.raises(ValueError, match="different samplers"):
        tiny_pipe.interpolate(*one, num_frames=FRAMES)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_inversion_then_animation(tiny_pipe, images, sampler):
    """A deterministic sampler inverts a clean latent along its own timesteps; the animation's frame 0 is it."""
    latent = images[sampler].latent
    inverted = tiny_pipe.invert_latent(latent, "a cat", steps=STEPS, sampler=sampler)
    assert inverted.info["sampler"] == sampler and inverted.timesteps == tiny_pipe.sampler_for(sampler).timesteps(STEPS)
    assert torch.equal(inverted.trajectory[-1], latent.to(inverted.trajectory[-1]))
    video = tiny_pipe.animate(inverted, num_frames=FRAMES, seed=0)
    first_frame_exact(video, inverted)


def test_lcm_inversion_is_refused_before_any_work(tiny_pipe, images, tmp_path):
    lcm_pipe = AnimateZeroPipeline(
        tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.tokenizer, tiny_pipe.motion_module,
        default_size=(SIZE, SIZE), default_sampling=(STEPS, 1.0, "lcm"),
    )  # fmt: skip
    lcm_pipe.progress = False
    missing = tmp_path / "not_read.png"  # refused before the image is even opened
    with UNetCalls(tiny_pipe.unet) as calls:
        with pytest.raises(ValueError, match="lcm sampler draws fresh noise.*sampler='ddim'"):
            lcm_pipe.invert_latent(images["lcm"].latent, "a cat")
        with pytest.raises(ValueError, match="cannot be inverted"):
            lcm_pipe.invert_image(missing, "a cat")
        with pytest.raises(ValueError, match="cannot be inverted"):
            tiny_pipe.invert_latent(images["lcm"].latent, "a cat", sampler="lcm")
        video = lcm_pipe.animate(images["lcm"], num_frames=FRAMES, seed=0)
        n = len(calls.batches)
        with pytest.raises(ValueError, match="cannot be inverted"):
            lcm_pipe.continue_video(video, num_frames=FRAMES)
    assert n == STEPS and len(calls.batches) == n  # only the animation ran the UNet
    first_frame_exact(video, images["lcm"])
    # the model's default sampler is used when a call names none, and its unknown names fail at construction
    assert lcm_pipe.text_to_image("x", seed=0).info["sampler"] == "lcm"
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        AnimateZeroPipeline(tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.tokenizer,
                            default_sampling=(4, 1.0, "dpm"))  # fmt: skip


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_long_clip_with_sliding_windows(tiny_pipe, images, sampler):
    image = images[sampler]
    f = tiny_pipe.motion_module.config.max_positions + 4
    with pytest.raises(ValueError, match="exceed the motion module's"):
        tiny_pipe.animate(image, num_frames=f, seed=0)
    video = tiny_pipe.animate(image, num_frames=f, seed=0, controls=Controls(sliding_windows=True))
    assert video.frames.shape[0] == f and torch.isfinite(video.frames).all()
    first_frame_exact(video, image)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_one_runs_a_single_branch(tiny_pipe, sampler):
    """Guidance 1: every UNet call holds one branch (no unconditional pass); guidance 2 doubles each batch."""
    for guidance, branches in ((1.0, 1), (2.0, 2)):
        with UNetCalls(tiny_pipe.unet) as calls:
            tiny_pipe.generate("a cat", num_frames=FRAMES, guidance_scale=guidance, **kwargs(sampler, seed=3))
        assert calls.batches == [(branches, 4), (branches, 5)] * STEPS, (guidance, calls.batches)


def test_lcm_with_given_latents_and_no_seed_records_a_seed(tiny_pipe, images):
    """LCM's per-step noise needs a seed: with latents and no seed one is drawn and recorded, and reproduces."""
    z = tiny_pipe.noise((1, 4, SIZE // 8, SIZE // 8), seed=4)
    image = tiny_pipe.text_to_image("a cat", latents=z, **kwargs("lcm"))
    assert isinstance(image.seed, int)
    again = tiny_pipe.text_to_image("a cat", latents=z, **kwargs("lcm", seed=image.seed))
    assert torch.equal(image.latent, again.latent)
    assert psnr(image.image, again.image) == 100.0
