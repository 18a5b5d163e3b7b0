"""DDIM schedule and sampler against diffusers' DDIMScheduler configured as the original AnimateDiff
(docs/checkpoints.md §2.8, §4.2)."""

import pytest
import torch

from models.ddim import DDIMSchedule, ddim_invert, ddim_sample, ddim_step
from models.guidance import cfg_denoiser
from tests import oracle


def diffusers_scheduler():
    return oracle.ddim_scheduler()  # configured as the original AnimateDiff, docs/checkpoints.md §4.2


def test_schedule_anchors():
    a = DDIMSchedule().alphas_cumprod
    assert a[0].item() == pytest.approx(0.99914998, abs=1e-7)
    assert a[1].item() == pytest.approx(0.99828953, abs=1e-7)
    assert a[500].item() == pytest.approx(0.16077162, abs=1e-7)
    assert a[999].item() == pytest.approx(0.00157896, abs=1e-7)
    s = DDIMSchedule(beta_schedule="scaled_linear").alphas_cumprod
    assert s[500].item() == pytest.approx(0.27633247, abs=1e-6)


@pytest.mark.parametrize("steps", [1, 7, 25, 50])
def test_timesteps_match_diffusers(steps):
    ref = diffusers_scheduler()
    ref.set_timesteps(steps)
    assert DDIMSchedule().timesteps(steps) == ref.timesteps.tolist()
    assert DDIMSchedule().timesteps(25)[:2] == [961, 921] and DDIMSchedule().timesteps(25)[-1] == 1


def toy_eps(x, t):
    """A smooth, timestep-dependent stand-in for a UNet."""
    return torch.tanh(x * (0.5 + t / 1000.0)) * 0.8 + 0.05 * torch.sin(x * 3)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_sampling_matches_diffusers(eta):
    steps = 10
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = diffusers_scheduler()
    ref.set_timesteps(steps)
    y = x.clone()
    g = torch.Generator().manual_seed(1)
    for t in ref.timesteps:
        y = ref.step(toy_eps(y, int(t)), t, y, eta=eta, generator=g).prev_sample
    ours = ddim_sample(toy_eps, x.clone(), DDIMSchedule(), steps, eta=eta, generator=torch.Generator().manual_seed(1))
    # diffusers computes the coefficients in float32, we in float64: agreement to float32 rounding
    assert ((ours - y).abs().max() / y.abs().max()).item() < 1e-6


def test_callback_sees_every_step():
    seen = []
    sched = DDIMSchedule()
    x = torch.randn(1, 4, 8, 8)
    out = ddim_sample(toy_eps, x, sched, 5, callback=seen.append)
    assert [s.i for s in seen] == list(range(5))
    assert [s.t for s in seen] == sched.timesteps(5)
    assert seen[-1].t_prev < 0 and torch.equal(seen[0].x, x)
    assert all(torch.equal(a.x_prev, b.x) for a, b in zip(seen, seen[1:])) and torch.equal(seen[-1].x_prev, out)


def test_ddim_step_inverts_add_noise():
    sched = DDIMSchedule()
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    xt = sched.add_noise(x0, eps, 500)
    _, x0_pred = ddim_step(xt, eps, sched.alpha_bar(500), sched.alpha_bar(460))
    assert torch.allclose(x0_pred, x0, atol=1e-5)


@pytest.mark.parametrize("coupling, tol", [(0.0, 1e-4), (0.01, 1e-2)])
def test_inversion_round_trip(coupling, tol):
    """Inversion then sampling returns to the start: exactly when eps does not depend on x, closely when it barely
    does (the usual eps(x_t) ~ eps(x_t_prev) approximation)."""

    def eps(x, t):
        return coupling * torch.tanh(x) + 0.3 * torch.sin(torch.tensor(t / 100.0))

    sched = DDIMSchedule()
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    traj = ddim_invert(eps, x0, sched, 50)
    assert len(traj) == 51 and torch.equal(traj[-1], x0)
    back = ddim_sample(eps, traj[0], sched, 50)
    assert (back - x0).abs().max().item() < tol


def test_cfg_orders_uncond_then_cond():
    calls = []

    def model(x, t, ctx):
        calls.append(ctx[:, 0, 0].tolist())
        return ctx[:, 0, 0].view(-1, 1, 1, 1) * torch.ones_like(x)

    cond, uncond = torch.full((1, 3, 2), 2.0), torch.full((1, 3, 2), 1.0)
    out = cfg_denoiser(model, cond, uncond, 7.5)(torch.zeros(1, 4, 2, 2), 10)
    assert calls == [[1.0, 2.0]]
    assert torch.allclose(out, torch.full_like(out, 1.0 + 7.5 * (2.0 - 1.0)))
    assert torch.allclose(
        cfg_denoiser(model, cond, uncond, 1.0)(torch.zeros(1, 4, 2, 2), 10), torch.full((1, 4, 2, 2), 2.0)
    )


def test_bad_steps():
    with pytest.raises(ValueError, match="steps must be in"):
        DDIMSchedule().timesteps(0)
