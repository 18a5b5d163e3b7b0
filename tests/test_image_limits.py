"""Input images cost memory in proportion to the request, not to the file (issue 37 #4): every format is refused
from its header when it holds more pixels than the request's budget, a JPEG decodes at reduced scale, and any other
format is box-averaged before it becomes floats. The files here are the attacks themselves: a 37-byte GIF whose
logical screen is 7000x7000, an 8000x8000 PNG header."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import animatezero.io as azio
from animatezero.io import ImageInputError, check_image_file, image_budget, load_image
from evaluation.io import read_image, read_video

SIZE = 64


def screen_gif(path: Path, side: int) -> Path:
    """A 1x1-pixel GIF whose logical screen claims ``side`` x ``side`` (decoding allocates the whole screen)."""
    Image.new("P", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", side, side)  # the logical screen descriptor
    path.write_bytes(bytes(data))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels and holds no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel is decoded."""
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded before the refusal"))


def test_gif_with_a_huge_logical_screen_is_refused_from_its_header(tmp_path, no_decoding):
    path = screen_gif(tmp_path / "screen.gif", 7000)
    assert path.stat().st_size < 500  # the report's 447-byte GIF cost 1.3 GB and 3 s for a 64x64 request
    with pytest.raises(ImageInputError, match=r"screen.gif' is 7000x7000 pixels .*64x64 .*Resize it to 4000x4000"):
        load_image(path, (SIZE, SIZE))
    with pytest.raises(ImageInputError, match="7000x7000"):
        check_image_file(path, (SIZE, SIZE))


def test_huge_png_is_refused_for_a_small_request_from_its_header(tmp_path, no_decoding):
    path = png_header_only(tmp_path / "big.png", 8000, 8000)  # the report's 1.8 GB PNG, as far as the header goes
    with pytest.raises(ImageInputError, match=r"big.png' is 8000x8000 pixels \(64.0 MP\); for a 512x512 result"):
        load_image(path, (512, 512))


def test_the_budget_follows_the_request():
    assert image_budget((64, 64)) == azio.MIN_IMAGE_BUDGET  # any photo up to 16 MP, even for the toy world
    assert image_budget((1024, 768)) == azio.IMAGE_BUDGET_PER_PIXEL * 1024 * 768  # 50 MP for a 1024x768 result
    assert image_budget((2048, 2048)) == image_budget(None) == azio.MAX_IMAGE_PIXELS


def test_budget_edges_for_every_format(tmp_path, monkeypatch):
    monkeypatch.setattr(azio, "MIN_IMAGE_BUDGET", 10_000)
    monkeypatch.setattr(azio, "IMAGE_BUDGET_PER_PIXEL", 2)  # a 64x64 request may decode 10,000 pixels
    rgb = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    for suffix in (".png", ".webp", ".bmp", ".gif", ".tiff"):
        fits = tmp_path / f"fits{suffix}"
        Image.fromarray(rgb).save(fits)
        assert load_image(fits, (SIZE, SIZE)).shape == (3, 100, 100)
        over = tmp_path / f"over{suffix}"
        Image.fromarray(np.concatenate([rgb, rgb[:1]])).save(over)  # 101x100 = 10,100 pixels
        with pytest.raises(ImageInputError, match="100x101 pixels"):
            load_image(over, (SIZE, SIZE))
    assert load_image(over).shape == (3, 101, 100)  # without a request: only the absolute limits


def test_jpeg_counts_at_its_reduced_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(azio, "MIN_IMAGE_BUDGET", 10_000)
    monkeypatch.setattr(azio, "IMAGE_BUDGET_PER_PIXEL", 2)
    photo = np.random.default_rng(1).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    jpeg, png = tmp_path / "photo.jpg", tmp_path / "photo.png"
    Image.fromarray(photo).save(jpeg)
    Image.fromarray(photo).save(png)
    assert load_image(jpeg, (SIZE, SIZE)).shape == (3, 100, 100)  # decoded at 1/8: 10,000 pixels
    with pytest.raises(ImageInputError, match="800x800"):
        load_image(png, (SIZE, SIZE))


def test_mpo_phone_photos_decode_at_reduced_scale_too(tmp_path):
    frames = [Image.fromarray(np.full((512, 768, 3), v, np.uint8)) for v in (50, 200)]
    path = tmp_path / "phone.jpg"
    frames[0].save(path, "MPO", save_all=True, append_images=frames[1:])
    with Image.open(path) as img:
        assert img.format == "MPO"
    assert load_image(path, (SIZE, SIZE)).shape == (3, 64, 96)  # was decoded at 512x768


def test_other_formats_are_not_decoded(tmp_path):
    path = tmp_path / "photo.ppm"  # Pillow reads it, but it is not among the formats that are read
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ImageInputError, match="not a PNG, JPEG, WebP, BMP, GIF or TIFF image"):
        load_image(path)


def test_large_png_becomes_floats_only_at_the_requested_scale(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (1000, 2000, 3), dtype=np.uint8)).save(path)
    out = load_image(path, (SIZE, SIZE))
    assert out.shape == (3, 67, 134)  # 1000 // 64 = 15x box average: still covers 64 in both sides; was 1000x2000
    full = load_image(path)
    assert torch.allclose(out[:, :66, :133], full[:, :990, :1995].reshape(3, 66, 15, 133, 15).mean((2, 4)), atol=1e-2)


def test_reduction_composites_alpha_exactly(tmp_path):
    """Averaging straight alpha would bleed the colour of transparent pixels into the result; premultiplied does
    not: half transparent black, half opaque red over white is pink, at any scale."""
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[:, ::2] = (255, 0, 0, 255)  # opaque red columns between fully transparent black ones
    path = tmp_path / "stripes.png"
    Image.fromarray(rgba, "RGBA").save(path)
    small = load_image(path, (SIZE, SIZE))  # 4x box average
    assert small.shape == (3, 64, 64)
    assert torch.allclose(small, torch.tensor([1.0, 0.5, 0.5]).view(3, 1, 1).expand_as(small), atol=1 / 255)
    assert torch.allclose(load_image(path).mean((1, 2)), torch.tensor([1.0, 0.5, 0.5]), atol=1 / 255)


def test_16bit_and_float_images_are_reduced_by_their_mode(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((256, 256), 30000, np.uint16)).save(path)
    out = load_image(path, (SIZE, SIZE))
    assert out.shape == (3, 64, 64) and out.max().item() == pytest.approx(30000 / 65535)
    hdr = tmp_path / "hdr.tiff"
    values = np.zeros((256, 256), np.float32)
    values[0, 0] = 9.0  # one outlier that a 4x average would dilute below 1
    Image.fromarray(values, "F").save(hdr)
    with pytest.raises(ImageInputError, match=r"values in \[0, 9\]"):
        load_image(hdr, (SIZE, SIZE))


def test_exif_orientation_with_a_request_and_in_the_header(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 256 wide and 128 high, shown 128 wide and 256 high
    for suffix in (".png", ".jpg", ".webp"):
        path = tmp_path / f"rotated{suffix}"
        Image.fromarray(np.zeros((128, 256, 3), np.uint8)).save(path, exif=exif)
        assert check_image_file(path) == (256, 128), suffix
        assert load_image(path, (SIZE, SIZE)).shape == (3, 128, 64), suffix  # upright, 2x reduced


def test_invert_image_refuses_before_encoding(tiny_pipe, tmp_path, no_decoding, monkeypatch):
    monkeypatch.setattr(tiny_pipe.vae, "encode", lambda *a, **k: pytest.fail("encoded an image that is refused"))
    path = screen_gif(tmp_path / "screen.gif", 7000)
    with pytest.raises(ImageInputError, match="7000x7000"):
        tiny_pipe.invert_image(path, "x", height=SIZE, width=SIZE, steps=1)
    with pytest.raises(ImageInputError, match="7000x7000"):  # no size given: the pipeline's default size is asked
        tiny_pipe.invert_image(path, "x", steps=1)


def test_invert_image_without_a_size_fits_the_upright_file(tiny_pipe, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.fromarray(np.zeros((48, 72, 3), np.uint8)).save(path, exif=exif)  # shown 48 wide, 72 high
    tiny_pipe.default_size = (SIZE, SIZE)
    try:
        real = tiny_pipe.invert_image(path, "x", steps=1)
    finally:
        tiny_pipe.default_size = (512, 512)
    assert real.image.shape == (3, 96, 64)  # short side 64, long side 72 * 64 / 48 = 96, as fit_image computes


def test_evaluation_reads_images_within_the_same_limits(tmp_path, no_decoding):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.ppm")
    with pytest.raises(ImageInputError, match="not a PNG, JPEG"):
        read_image(tmp_path / "x.ppm")
    with pytest.raises(ImageInputError, match="9000x9000 = 81 megapixels"):
        read_image(png_header_only(tmp_path / "huge.png", 9000, 9000))


def test_evaluation_refuses_a_gif_whose_frames_hold_too_many_pixels(tmp_path, monkeypatch):
    path = tmp_path / "video.gif"
    frames = [Image.new("RGB", (100, 100), (25 * i, 0, 0)) for i in range(10)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert read_video(path).shape == (10, 3, 100, 100)
    monkeypatch.setattr(azio, "MAX_VIDEO_PIXELS", 99_999)  # 10 frames of 10,000 pixels
    monkeypatch.setattr(Image.Image, "convert", lambda *a, **k: pytest.fail("decoded before the refusal"))
    with pytest.raises(ImageInputError, match="the 10 frames of GIF .* hold 0.1 megapixels, over the 0.1 MP"):
        read_video(path)
