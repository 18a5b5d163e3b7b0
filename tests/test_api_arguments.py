"""The Python API's argument types (issue 37 #11): numpy numbers are numbers, a bool is not a step count, a string
is not a guidance scale, a prompt or an image is never None, and image tensors are read the way image files are
(uint8 scaled, grey and RGBA converted). Checked in animatezero/checks.py and animatezero/io.py, so the CLI, the
app and the API refuse alike, before any network runs."""

import numpy as np
import pytest
import torch
from PIL import Image

from animatezero.checks import ArgumentTypeError
from animatezero.io import ImageInputError, image_tensor, load_image
from experiments.cli import user_errors

SIZE = 64
ARGS = {"height": SIZE, "width": SIZE, "steps": 1}


@pytest.fixture
def nothing_runs(tiny_pipe, monkeypatch):
    """Fail the test if any network runs."""
    monkeypatch.setattr(tiny_pipe.runner, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    monkeypatch.setattr(tiny_pipe.vae, "encode", lambda *a, **k: pytest.fail("the VAE encoded"))
    monkeypatch.setattr(tiny_pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("the text encoder ran"))


def test_numpy_numbers_are_accepted_and_converted(tiny_pipe):
    plain = tiny_pipe.text_to_image("a fox", seed=3, guidance_scale=7.0, **ARGS)
    numpy = tiny_pipe.text_to_image(
        "a fox", seed=np.int64(3), guidance_scale=np.float32(7.0), height=np.int64(SIZE), width=SIZE, steps=np.int32(1)
    )
    assert torch.equal(numpy.image, plain.image)  # the same noise, the same picture
    assert type(numpy.seed) is int and type(numpy.guidance_scale) is float and numpy.steps == 1
    big = tiny_pipe.text_to_image("a fox", seed=np.uint64(2**63 + 5), **ARGS)  # was "an integer is required"
    assert big.seed == 2**63 + 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": True}, r"steps must be an integer, got True \(bool\)"),
        ({"steps": 2.0}, r"steps must be an integer, got 2.0 \(float\)"),
        ({"height": True}, "height must be an integer"),
        ({"guidance_scale": "7"}, r"guidance_scale must be a number, got '7' \(str\); pass a number, e.g. guidance_sc"),
        ({"guidance_scale": torch.tensor(7.0)}, "guidance_scale must be a number, got tensor"),
        ({"guidance_scale": False}, "guidance_scale must be a number"),
        ({"prompt": None}, r"prompt must be a string, got None \(NoneType\); pass '' for none"),
        ({"prompt": ["a", "b"]}, "prompt must be a string, got"),
        ({"negative_prompt": None}, "negative_prompt must be a string"),
    ],
)
def test_wrong_types_are_refused_before_work(tiny_pipe, nothing_runs, kwargs, match):
    kwargs = {"prompt": "x", **ARGS, **kwargs}
    with pytest.raises(ArgumentTypeError, match=match) as refused:
        tiny_pipe.text_to_image(kwargs.pop("prompt"), **kwargs)
    assert isinstance(refused.value, TypeError) and isinstance(refused.value, user_errors())  # one line in the CLI


def test_every_entry_point_checks_its_prompts(tiny_pipe, nothing_runs):
    from animatezero.results import ImageResult

    with pytest.raises(ArgumentTypeError, match="prompt must be a string"):
        tiny_pipe.text_to_video(None, num_frames=2, **ARGS)
    with pytest.raises(ArgumentTypeError, match="negative_prompt must be a string"):
        tiny_pipe.generate("x", negative_prompt=None, num_frames=2, **ARGS)
    with pytest.raises(ArgumentTypeError, match="num_frames must be an integer, got True"):
        tiny_pipe.text_to_video("x", num_frames=True, **ARGS)
    anchor = ImageResult(
        image=torch.zeros(3, SIZE, SIZE), latent=torch.zeros(1, 4, 8, 8), trajectory=[torch.zeros(1, 4, 8, 8)] * 2,
        timesteps=tiny_pipe.schedule.timesteps(1), prompt="x", negative_prompt="", guidance_scale=7.5, seed=0,
    )  # fmt: skip
    with pytest.raises(ArgumentTypeError, match="end_prompt must be a string, got 5"):
        tiny_pipe.animate(anchor, end_prompt=5, num_frames=2)
    with pytest.raises(ArgumentTypeError, match="prompt must be a string"):
        tiny_pipe.invert_latent(torch.zeros(1, 4, 8, 8), None, steps=1)
    with pytest.raises(ArgumentTypeError, match="prompt must be a string"):
        tiny_pipe.invert_image(torch.zeros(3, SIZE, SIZE), None, **ARGS)
    with pytest.raises(ArgumentTypeError, match="guidance_scale must be a number"):
        tiny_pipe.invert_image(torch.zeros(3, SIZE, SIZE), "x", guidance_scale="7", **ARGS)


def test_a_missing_image_is_named(tiny_pipe, nothing_runs):
    with pytest.raises(ArgumentTypeError, match=r"image must be a file path, a PIL image, or a \[3, H, W\]"):
        tiny_pipe.invert_image(None, "x", **ARGS)


def test_uint8_image_tensors_are_scaled_not_clamped(tiny_pipe):
    rgb = torch.randint(0, 256, (3, SIZE, SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    as_float = tiny_pipe.invert_image(rgb.float() / 255, "x", **ARGS)
    chw = tiny_pipe.invert_image(rgb, "x", **ARGS)  # was clamped to 0/1: an almost white picture
    hwc = tiny_pipe.invert_image(rgb.permute(1, 2, 0).numpy(), "x", **ARGS)  # the PIL/numpy layout, as an array
    pil = tiny_pipe.invert_image(Image.fromarray(rgb.permute(1, 2, 0).numpy()), "x", **ARGS)
    for result in (chw, hwc, pil):
        assert torch.equal(result.latent, as_float.latent)


def test_grey_and_rgba_tensors_are_read_like_files(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    from_file = load_image(tmp_path / "rgba.png")
    for tensor in (torch.from_numpy(rgba), torch.from_numpy(rgba).permute(2, 0, 1), torch.from_numpy(rgba)[None]):
        assert torch.allclose(image_tensor(tensor), from_file, atol=1 / 255)  # composited onto white, as the file
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    from_file = load_image(tmp_path / "grey.png")
    for tensor in (torch.from_numpy(grey), torch.from_numpy(grey)[None], torch.from_numpy(grey)[..., None]):
        assert torch.equal(image_tensor(tensor), from_file)
    assert torch.equal(image_tensor(Image.fromarray(grey)), from_file)


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.rand(3, SIZE, SIZE) * 255, r"holds values in \[.*\]; float pixels lie in \[0, 1\]: divide it by 255"),
        (torch.rand(3, SIZE, SIZE) * 2 - 1, r"map it to \[0, 1\], e.g. \(x \+ 1\) / 2"),
        (torch.full((3, SIZE, SIZE), float("nan")), "NaN or infinite"),
        (torch.zeros(3, SIZE, SIZE, dtype=torch.int64), "torch.int64 tensor, whose value range is not defined"),
        (torch.zeros(2, 3, SIZE, SIZE), r"has shape \[2, 3, 64, 64\]; pass one image"),
        (torch.zeros(2, SIZE, SIZE), r"has shape \[2, 64, 64\]"),
        (np.array([["a"]], dtype=object), "array of object"),
        (torch.zeros(3, 1, 4000), "more elongated than 16:1"),
    ],
)
def test_bad_image_tensors_are_refused_before_work(tiny_pipe, nothing_runs, image, match):
    with pytest.raises(ImageInputError, match=match):
        tiny_pipe.invert_image(image, "x", **ARGS)


def test_float_resampling_overshoot_is_clamped():
    x = torch.full((3, 8, 8), 0.5)
    x[0, 0, 0], x[0, 0, 1] = 1.002, -0.002  # bicubic resizing overshoots by a little
    out = image_tensor(x)
    assert out.min().item() == 0.0 and out.max().item() == 1.0 and out.dtype == torch.float32


def test_reduced_precision_image_tensors_and_pipelines(tiny_files):
    from animatezero.pipeline import AnimateZeroPipeline

    rgb = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(image_tensor(rgb.to(dtype)), rgb.to(dtype).float())
    bf16 = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], dtype=torch.bfloat16)
    real = bf16.invert_image((rgb * 255).round().to(torch.uint8), "x", guidance_scale=np.float32(5), **ARGS)
    assert real.latent.dtype == torch.bfloat16 and bool(torch.isfinite(real.latent.float()).all())
    assert type(real.guidance_scale) is float
