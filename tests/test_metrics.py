"""Exact cases for the metric functions of ``evaluation/``, with toy and oracle networks (CPU, torch only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation import (
    PSNR_CAP_DB,
    as_image,
    as_video,
    bootstrap_ci,
    domain_sim,
    dynamic_degree,
    first_frame_fidelity,
    frame_consistency,
    motion_amount,
    psnr,
    ssim,
    style_dist,
    summarize,
    text_sim,
    warping_error,
)
from evaluation.flow import occlusion_mask, warp, warping_error_per_pair
from evaluation.stats import summarize_rows
from evaluation.style import gram_matrix, style_dist_per_frame

# ----------------------------------------------------------------------------------------------- helpers

RED, GREEN, BLUE, YELLOW = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)
TEXT_VECTORS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "red and green": [1.0, 1.0, 0.0]}


class ToyEncoder:
    """Image embedding = mean RGB; text embedding = a fixed vector per prompt. Counts its calls."""

    def __init__(self):
        self.calls = 0

    def encode_image(self, images):
        self.calls += 1
        return images.mean(dim=(2, 3))

    def encode_text(self, texts):
        self.calls += 1
        return torch.tensor([TEXT_VECTORS[t] for t in texts])


def solid(*colors, size=8):
    """A video of solid-colour frames, [F, 3, size, size]."""
    return torch.stack([torch.tensor(c).view(3, 1, 1).expand(3, size, size) for c in colors]).float()


def blurred_noise(seed=0, size=64):
    """A smooth random image [1, 3, size, size] (uniform noise through a 5x5 box filter)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, size + 4, size + 4, generator=g)
    return F.avg_pool2d(noise, 5, stride=1)


def shift(image, dx, dy):
    """image(p - d) with wrap-around, so that shifted(p + d) == image(p) wherever p + d is inside the frame."""
    return torch.roll(image, shifts=(dy, dx), dims=(2, 3))


class OracleFlow:
    """Exact flow for a video whose frame k is frame 0 shifted by k * d: flow(a -> b) = (k_b - k_a) * d."""

    def __init__(self, video, d):
        self.video, self.d = video, torch.tensor(d, dtype=torch.float32).view(1, 2, 1, 1)

    def _index(self, frame):
        return next(k for k, v in enumerate(self.video) if torch.equal(v, frame))

    def __call__(self, a, b):
        steps = torch.tensor([self._index(y) - self._index(x) for x, y in zip(a, b)], dtype=torch.float32)
        return steps.view(-1, 1, 1, 1) * self.d.expand(a.shape[0], 2, *a.shape[-2:])


class ConstantFlow:
    def __init__(self, dx=0.0, dy=0.0):
        self.d = (dx, dy)

    def __call__(self, a, b):
        out = torch.zeros(a.shape[0], 2, *a.shape[-2:])
        out[:, 0], out[:, 1] = self.d
        return out


# ----------------------------------------------------------------------------------------------- inputs


def test_as_video_accepts_uint8_channels_last_and_float():
    u8 = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    v = as_video(u8)
    assert v.shape == (2, 3, 4, 5) and v.dtype == torch.float32
    assert torch.equal(v[1, 2, 3, 4], torch.tensor(u8[1, 3, 4, 2] / 255.0, dtype=torch.float32))
    f = torch.rand(3, 3, 4, 4)
    assert torch.equal(as_video(f), f)
    assert as_image(f[0]).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_video(f * 255)
    with pytest.raises(ValueError):
        as_video(torch.rand(2, 4, 4, 3))  # float must be channels-first


# ----------------------------------------------------------------------------------------------- warping error


def test_identical_frames_give_zero_warping_error_and_zero_motion():
    frame = blurred_noise()
    video = frame.expand(4, -1, -1, -1).contiguous()
    zero = ConstantFlow()
    assert warping_error(video, zero) == pytest.approx(0.0, abs=1e-20)
    assert warping_error(video, zero, include_first_frame=False) == pytest.approx(0.0, abs=1e-20)
    assert motion_amount(video, zero) == 0.0
    assert dynamic_degree(video, zero) is False


def test_exact_flow_gives_zero_warping_error_on_shifted_images():
    f0 = blurred_noise(seed=1)
    video = torch.cat([f0, shift(f0, -3, -2), shift(f0, -6, -4)])  # each frame moves by d = (-3, -2)
    oracle = OracleFlow(video, (-3.0, -2.0))
    assert warping_error(video, oracle) < 1e-12
    assert warping_error(video, oracle, include_first_frame=False) < 1e-12
    # the same pair with zero flow is clearly wrong
    assert warping_error(video[:2], ConstantFlow()) > 1e-3


def test_border_pixels_leaving_the_frame_are_occluded():
    forward = torch.zeros(1, 2, 64, 64)
    forward[:, 0], forward[:, 1] = -3.0, -2.0
    occluded = occlusion_mask(forward, -forward)
    # p + f leaves the frame for x < 3 or y < 2: the zero-padded backward flow fails the consistency test there
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[:, :3] = True
    expected[:2, :] = True
    assert torch.equal(occluded[0], expected)
    assert (~occluded).float().mean().item() == pytest.approx(61 * 62 / 64**2)


def test_motion_boundary_and_inconsistent_flow_are_masked():
    step = torch.zeros(1, 2, 16, 16)
    step[:, 0, :, 8:] = 5.0  # a sharp edge in the horizontal flow between columns 7 and 8
    backward = -step  # consistent wherever it is sampled inside the same region
    occluded = occlusion_mask(step, backward)
    assert occluded[0, :, 7].all()  # forward difference at column 7 sees the edge
    assert not occluded[0, :, :3].any()  # flat, zero-flow region
    constant = torch.full((1, 2, 16, 16), 2.0)
    assert occlusion_mask(constant, torch.zeros_like(constant)).all()  # |f + b~|^2 = 8 > 0.01 * 8 + 0.5


def test_warping_error_of_independent_noise_is_one_sixth():
    g = torch.Generator().manual_seed(3)
    video = torch.rand(2, 3, 64, 64, generator=g)
    assert warping_error(video, ConstantFlow()) == pytest.approx(1 / 6, abs=0.01)


def test_warping_error_per_pair_uses_masked_pixel_channel_count():
    video = torch.zeros(2, 3, 8, 8)
    video[1] = 0.5
    zero = torch.zeros(1, 2, 8, 8)
    assert warping_error_per_pair(video, zero, zero).item() == pytest.approx(0.25)
    all_occluded = torch.full((1, 2, 8, 8), 2.0)  # inconsistent everywhere: no valid pixel, sum 0 / all elements
    assert warping_error_per_pair(video, all_occluded, all_occluded).item() == 0.0


def test_warp_with_integer_flow_is_exact_inside():
    x = torch.arange(2 * 6 * 7, dtype=torch.float64).view(1, 2, 6, 7)
    flow = torch.zeros(1, 2, 6, 7, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 1.0, 2.0
    out = warp(x, flow)
    assert torch.allclose(out[..., :4, :6], x[..., 2:, 1:])
    assert out[..., 4:, :].abs().max() < 1e-9 and out[..., :, 6].abs().max() < 1e-9


def test_motion_amount_and_dynamic_degree():
    video = torch.rand(3, 3, 64, 64)
    assert motion_amount(video, ConstantFlow(3.0, 4.0)) == pytest.approx(5.0)
    assert motion_amount(video, ConstantFlow(3.0, 4.0), include_first_frame=False) == pytest.approx(5.0)
    assert dynamic_degree(video, ConstantFlow(3.0, 4.0)) is True  # 5 px > 6 * 64 / 256 = 1.5 px
    assert dynamic_degree(video, ConstantFlow(1.0, 0.0)) is False
    assert math.isnan(motion_amount(video[:1], ConstantFlow()))


# ----------------------------------------------------------------------------------------------- first frame


def test_psnr_identical_is_capped_and_known_noise_level():
    a = torch.full((1, 3, 16, 16), 0.5)
    assert psnr(a, a) == PSNR_CAP_DB
    checker = (torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2 * 2 - 1  # +-1 pattern
    b = a + 0.1 * checker.float()  # MSE = 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-5)
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-4)


def test_ssim_identity_constant_images_and_symmetry():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    a, b = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.3)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.3 + c1) / (0.5**2 + 0.3**2 + c1), abs=1e-6)
    y = (x + 0.1 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    assert ssim(x, y) == pytest.approx(ssim(y, x)) and 0 < ssim(x, y) < 1


def test_first_frame_fidelity_resizes_the_image_and_uses_lpips():
    image = blurred_noise(size=32)
    frames = torch.cat([image, torch.rand(1, 3, 32, 32)])
    l1 = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # noqa: E731 - a toy perceptual distance
    out = first_frame_fidelity(frames, image, l1)
    assert out == {"psnr": PSNR_CAP_DB, "ssim": pytest.approx(1.0), "lpips": 0.0}
    big = F.interpolate(image, size=(64, 64), mode="nearest")  # a given image at twice the video size
    assert first_frame_fidelity(frames, big)["psnr"] > 25


# ----------------------------------------------------------------------------------------------- style


def test_gram_matrix_matches_einsum():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 4, 3, 5, generator=g)
    expected = torch.einsum("nchw,ndhw->ncd", f.double(), f.double()) / (4 * 3 * 5)
    assert torch.allclose(gram_matrix(f), expected)


def toy_extractor(images):
    """Two fixed 'layers': the image itself and its 2x2 average pool."""
    return [images, F.avg_pool2d(images, 2)]


def test_style_dist_zero_for_identical_positive_otherwise_and_exact():
    g = torch.Generator().manual_seed(0)
    x, r = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    assert style_dist(x, x, toy_extractor) == 0.0
    assert style_dist(x, r, toy_extractor) > 0
    assert style_dist(x, r, toy_extractor) == pytest.approx(style_dist(r, x, toy_extractor))
    d_layers = [(gram_matrix(a) - gram_matrix(b)).square().mean() for a, b in zip(toy_extractor(x), toy_extractor(r))]
    assert style_dist(x, r, toy_extractor) == pytest.approx(float(sum(d_layers) / 2))
    assert style_dist(x, x, toy_extractor, statistic="meanstd") == 0.0
    assert style_dist(x, r, toy_extractor, statistic="meanstd") > 0


def test_style_dist_frame0_variant_and_reference_average():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, 8, 8, generator=g)
    video = torch.cat([ref, torch.rand(2, 3, 8, 8, generator=g)])
    per_frame = style_dist_per_frame(video, ref, toy_extractor)
    assert per_frame[0] == 0
    assert style_dist(video, ref, toy_extractor) == pytest.approx(float(per_frame.mean()))
    assert style_dist(video, ref, toy_extractor, include_first_frame=False) == pytest.approx(
        float(per_frame[1:].mean())
    )
    two_refs = torch.cat([ref, video[1:2]])
    both = style_dist_per_frame(video, two_refs, toy_extractor)
    single = [style_dist_per_frame(video, r[None], toy_extractor) for r in two_refs]
    assert torch.allclose(both, (single[0] + single[1]) / 2)


# ----------------------------------------------------------------------------------------------- CLIP scores


def test_text_sim_known_cosines():
    enc = ToyEncoder()
    video = solid(RED, GREEN)
    assert text_sim(video, "red", enc) == pytest.approx(0.5)
    assert text_sim(video, "red", enc, include_first_frame=False) == pytest.approx(0.0)
    assert text_sim(video, "red and green", enc) == pytest.approx(1 / math.sqrt(2))
    assert text_sim(0.5 * solid(RED), "red", enc) == pytest.approx(1.0)  # embeddings are normalised


def test_domain_sim_averages_over_frames_and_references():
    enc = ToyEncoder()
    assert domain_sim(solid(RED, RED), solid(RED), enc) == pytest.approx(1.0)
    assert domain_sim(solid(RED), solid(BLUE), enc) == pytest.approx(0.0)
    got = domain_sim(solid(RED, GREEN), solid(RED, YELLOW), enc)
    assert got == pytest.approx((1 + math.sqrt(2)) / 4)  # ((1 + 1/sqrt2) / 2 + (0 + 1/sqrt2) / 2) / 2
    assert domain_sim(solid(RED, GREEN), solid(RED, YELLOW), enc, include_first_frame=False) == pytest.approx(
        1 / (2 * math.sqrt(2))
    )


def test_frame_consistency_consecutive_and_all_pairs():
    enc = ToyEncoder()
    assert frame_consistency(solid(RED, RED, RED), enc) == pytest.approx(1.0)
    assert frame_consistency(solid(RED, RED, RED), enc, mode="all_pairs") == pytest.approx(1.0)
    video = solid(RED, GREEN, RED)
    assert frame_consistency(video, enc) == pytest.approx(0.0)
    assert frame_consistency(video, enc, mode="all_pairs") == pytest.approx(1 / 3)
    assert frame_consistency(solid(GREEN, RED, RED), enc, include_first_frame=False) == pytest.approx(1.0)
    assert math.isnan(frame_consistency(solid(RED), enc))


# ----------------------------------------------------------------------------------------------- aggregation


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(0).normal(0.3, 0.05, size=40).tolist()
    lo, hi = bootstrap_ci(values)
    assert lo < float(np.mean(values)) < hi
    assert (lo, hi) == bootstrap_ci(values)
    assert hi - lo < 0.05
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    s = summarize([1.0, 2.0, float("nan"), 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["ci_low"] <= 2.0 <= s["ci_high"]


def test_summarize_rows_groups_by_config_columns():
    rows = [{"controls": "az", "m": 1.0}, {"controls": "az", "m": 3.0}, {"controls": "none", "m": 5.0}]
    out = summarize_rows(rows, ["m"], group_by=["controls"])
    assert out["controls=az"]["m"]["mean"] == 2.0 and out["controls=none"]["m"]["n"] == 1
    assert summarize_rows(rows, ["m"])["all"]["m"]["mean"] == 3.0
