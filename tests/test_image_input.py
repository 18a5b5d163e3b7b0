"""Images as the pipeline reads them: refused from the header when too large or too thin, decoded at the size the
request needs, and scaled by their mode (docs/reliability.md, "Images and Python arguments")."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animatezero.applications import fit_image
from animatezero.io import MAX_IMAGE_PIXELS, ImageInputError, load_image


# ----------------------------------------------------------------------------------- bounded image decode
def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path)
    return path


@pytest.mark.parametrize("shape", [(1, 20000), (4000, 4)])
def test_thin_images_are_refused_from_the_header(tmp_path, shape):
    path = _png(tmp_path / "thin.png", np.zeros((*shape, 3), np.uint8))
    assert path.stat().st_size < 2000  # a few hundred bytes that used to ask for gigabytes
    with pytest.raises(ImageInputError, match="more elongated than 16:1"):
        load_image(path)


def test_too_many_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png", np.zeros((300, 400, 3), np.uint8))
    import animatezero.io as azio

    monkeypatch.setattr(azio, "MAX_IMAGE_PIXELS", 100_000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded before the size check"))
    with pytest.raises(ImageInputError, match="megapixels, over the"):
        load_image(path)
    assert MAX_IMAGE_PIXELS < 144_000_000  # the 144-megapixel image of the report is refused


def test_pil_decompression_bomb_becomes_an_image_error(tmp_path, monkeypatch):
    path = _png(tmp_path / "x.png", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2x this
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        load_image(path)


def test_fit_image_allocates_only_the_requested_size(monkeypatch):
    import torch.nn.functional as F

    sizes = []
    real = F.interpolate

    def spy(x, size=None, **kwargs):
        sizes.append(tuple(size))
        return real(x, size=size, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    strip = torch.rand(3, 32, 512)  # 16:1, at the limit
    out = fit_image(strip, 512, 512)
    assert out.shape == (3, 512, 512) and sizes == [(512, 512)]  # was (512, 8192): the whole strip upscaled
    with pytest.raises(ImageInputError, match="elongated"):
        fit_image(torch.rand(3, 1, 20000), 512, 512)


def test_jpeg_is_decoded_at_a_reduced_size_when_a_size_is_asked(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1536, 3), np.uint8)).save(path)
    assert load_image(path).shape == (3, 1024, 1536)
    assert load_image(path, size=(256, 256)).shape == (3, 256, 384)  # 1/4 scale still covers 256x256
    assert load_image(path, size=(256, 384)).shape == (3, 512, 768)  # 1/2: covers 384 in either orientation


# ----------------------------------------------------------------------------------- images decoded by mode
def test_dark_16bit_image_is_scaled_by_its_mode_not_its_values(tmp_path):
    dark = np.full((8, 8), 200, np.uint16)  # max 200 < 255: the old rule took it for 8-bit and made it bright
    path = tmp_path / "dark16.png"
    Image.fromarray(dark).save(path)
    assert Image.open(path).mode.startswith("I")
    assert load_image(path).max().item() == pytest.approx(200 / 65535)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high
    img = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape == (3, 20, 10)  # displayed upright: 10 wide, 20 high


def test_float_tiff_in_unit_range_is_kept_and_others_refused(tmp_path):
    good = tmp_path / "f.tiff"
    Image.fromarray(np.full((4, 4), 0.25, np.float32), "F").save(good)
    assert load_image(good).mean().item() == pytest.approx(0.25)
    hdr = tmp_path / "hdr.tiff"
    Image.fromarray(np.full((4, 4), 7.5, np.float32), "F").save(hdr)
    with pytest.raises(ImageInputError, match=r"values in \[7.5, 7.5\]"):
        load_image(hdr)
    int32 = tmp_path / "i.tiff"
    Image.fromarray(np.full((4, 4), 70000, np.int32), "I").save(int32)
    with pytest.raises(ImageInputError, match="32-bit integer image"):
        load_image(int32)


def test_image_values_always_lie_in_unit_range(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 65535]], np.uint16).repeat(8, 0).repeat(4, 1)).save(path)
    out = load_image(path)
    assert out.min().item() == 0.0 and out.max().item() == 1.0 and not math.isnan(out.sum().item())
