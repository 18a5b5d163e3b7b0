"""The few-step samplers (models/samplers.py) against diffusers: LCMScheduler(beta_schedule="linear") as AnimateLCM
configures it, EulerDiscreteScheduler(timestep_spacing="trailing", beta_schedule="linear") as AnimateDiff-Lightning
does, and DDIM as before. First the samplers alone (timesteps, every step against ``scheduler.step`` with a toy
denoiser and the same noise), then whole pipelines from the same synthetic files: our text_to_image / text_to_video
against StableDiffusionPipeline / AnimateDiffPipeline with the scheduler swapped in, given the same seed (so the
initial latents *and* LCM's per-step noise come from one CPU generator on both sides, as diffusers draws them) or the
same ``latents=`` plus that seed (the generator then only draws the per-step noise)."""

import pytest
import torch

from animatezero.pipeline import AnimateZeroPipeline
from models.ddim import DDIMSchedule, ddim_invert, ddim_sample
from models.samplers import DDIM, LCM, Euler, get_sampler, invert, sample
from tests import oracle

SIZE, FRAMES, TOL = 64, 4, 1e-4


def lcm_scheduler():
    import diffusers

    return diffusers.LCMScheduler.from_config(oracle.ddim_scheduler().config, beta_schedule="linear")


def euler_scheduler():
    import diffusers

    return diffusers.EulerDiscreteScheduler.from_config(
        oracle.ddim_scheduler().config, timestep_spacing="trailing", beta_schedule="linear"
    )


SCHEDULERS = {"ddim": oracle.ddim_scheduler, "lcm": lcm_scheduler, "euler": euler_scheduler}


def toy_eps(x, t):
    """A smooth, timestep-dependent stand-in for a UNet."""
    return torch.tanh(x * (0.5 + t / 1000.0)) * 0.8 + 0.05 * torch.sin(x * 3)


@pytest.mark.parametrize("name", ["ddim", "lcm", "euler"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25])
def test_timesteps_match_diffusers(name, steps):
    ref = SCHEDULERS[name]()
    ref.set_timesteps(steps)
    assert get_sampler(name).timesteps(steps) == [int(t) for t in ref.timesteps.tolist()]


def test_known_few_step_timesteps():
    assert LCM().timesteps(4) == [999, 759, 499, 259]
    assert Euler().timesteps(4) == [999, 749, 499, 249]
    assert DDIM().timesteps(4) == [751, 501, 251, 1]
    with pytest.raises(ValueError, match="LCM takes 1..50"):
        LCM().timesteps(51)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        get_sampler("dpm")


def reference_loop(name, steps, x, seed):
    """diffusers' scheduler loop (scale_model_input, step with a generator) on ``toy_eps``; latents in, latents out
    in the UNet's variance-preserving form (Euler's sigma form converted at both ends)."""
    ref = SCHEDULERS[name]()
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    y = x * ref.init_noise_sigma
    for t in ref.timesteps:
        eps = toy_eps(ref.scale_model_input(y, t), int(t))
        y = ref.step(eps, t, y, generator=g).prev_sample
    return y


@pytest.mark.parametrize("name", ["ddim", "lcm", "euler"])
@pytest.mark.parametrize("steps", [1, 4, 6])
def test_sampling_matches_scheduler_step(name, steps):
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = reference_loop(name, steps, x.clone(), seed=5)
    ours = sample(toy_eps, x.clone(), get_sampler(name), steps, generator=torch.Generator().manual_seed(5))
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-5
    if name == "lcm" and steps > 1:  # the per-step noise matters: another stream gives another sample
        other = sample(toy_eps, x.clone(), LCM(), steps, generator=torch.Generator().manual_seed(6))
        assert ((other - ref).abs().max() / ref.abs().max()).item() > 1e-2


def test_ddim_sampler_is_models_ddim_bit_for_bit():
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(toy_eps, x, DDIM(), 7), ddim_sample(toy_eps, x, DDIMSchedule(), 7))
    a, b = invert(toy_eps, x, DDIM(), 7), ddim_invert(toy_eps, x, DDIMSchedule(), 7)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_euler_is_ddim_on_its_timesteps():
    """Euler (eps-prediction, no churn) is DDIM eta 0 in sigma form: the same sample, to float rounding."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    euler = Euler()
    timesteps = euler.timesteps(4)
    y = euler.start(x, 4)  # diffusers' trailing Euler starts from sigma_max * noise: sqrt(1 - a_T) x here
    assert 0.999 < (y / x).mean().item() < 1
    for i, t in enumerate(timesteps):
        y = DDIM().step(y, toy_eps(y, t), t, euler.previous(i, timesteps))[0]
    assert torch.allclose(sample(toy_eps, x, euler, 4), y, rtol=1e-5, atol=1e-6)


def test_lcm_needs_a_generator_and_refuses_inversion():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="seeded generator"):
        sample(toy_eps, x, LCM(), 4)
    sample(toy_eps, x, LCM(), 1)  # one step draws no noise
    with pytest.raises(ValueError, match="cannot be inverted"):
        invert(toy_eps, x, LCM(), 4)


def test_euler_inversion_round_trips_the_ode():
    """Inverting Euler's sample gets back near the x_T it started from (the usual eps(x_t) ~ eps(x_prev)
    approximation, shrinking with the step size) on a smooth toy denoiser; measured 0.8 % of max |x_T| at 25 steps,
    4 % at 4."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = lambda x, t: torch.tanh(x) * 0.5  # noqa: E731
    errors = {}
    for steps in (4, 25):
        z0 = sample(eps, x, Euler(), steps)
        back = invert(eps, z0, Euler(), steps)
        assert len(back) == steps + 1 and torch.equal(back[-1], z0)
        errors[steps] = (back[0] - Euler().start(x, steps)).abs().max().item() / x.abs().max().item()
    assert errors[25] < 0.02 and errors[4] < 0.1 and errors[25] < errors[4] / 3, errors


# ------------------------------------------------------------------------------------------------ whole pipelines
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("samplers")
    files = oracle.synthetic_checkpoints("tiny", cache_dir=root, log=lambda *a: None)
    config_dir = oracle.write_config_dir(files, root / "configs")
    ours = AnimateZeroPipeline.from_single_files(files.sd15, files.motion)
    ours.progress = False
    video = oracle.build_animatediff(files, config_dir)
    assert oracle.patch_motion_norms(video.unet) > 0
    image = oracle.build_stable_diffusion(files, config_dir, vae=video.vae, text_encoder=video.text_encoder)
    return ours, image, video


CASES = [("lcm", 4, 1.0), ("lcm", 4, 2.0), ("euler", 4, 1.0), ("euler", 2, 1.0)]


@pytest.mark.parametrize("name,steps,guidance", CASES)
@pytest.mark.parametrize("given_latents", [False, True])
def test_text_to_image_matches_diffusers(setup, name, steps, guidance, given_latents):
    ours, ref_pipe, _ = setup
    ref_pipe.scheduler = SCHEDULERS[name]()
    seed = 7
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))
    given = dict(latents=latents.clone()) if given_latents else {}
    with torch.inference_mode():
        ref = ref_pipe(
            "a cat, blinking", height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **given,
        ).images  # fmt: skip
    mine = ours.text_to_image(
        "a cat, blinking", height=SIZE, width=SIZE, steps=steps, guidance_scale=guidance, seed=seed, sampler=name,
        **given,
    )  # fmt: skip
    err = oracle.max_err(mine.latent, ref)
    assert err["rel"] <= TOL, err
    assert mine.info["sampler"] == name and mine.timesteps == get_sampler(name).timesteps(steps)


@pytest.mark.parametrize("name,steps,guidance", CASES)
@pytest.mark.parametrize("given_latents", [False, True])
def test_text_to_video_matches_animatediff(setup, name, steps, guidance, given_latents):
    ours, _, ref_pipe = setup
    ref_pipe.scheduler = SCHEDULERS[name]()
    seed = 11
    latents = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(2))
    given = dict(latents=latents.clone()) if given_latents else {}
    with torch.inference_mode():
        ref = ref_pipe(
            "a cat, blinking", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
            guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
            **given,
        ).frames  # fmt: skip
    mine = ours.text_to_video(
        "a cat, blinking", num_frames=FRAMES, height=SIZE, width=SIZE, steps=steps, guidance_scale=guidance,
        seed=seed, sampler=name, **given,
    )  # fmt: skip
    err = oracle.max_err(mine.latents, ref)
    assert err["rel"] <= TOL, err
