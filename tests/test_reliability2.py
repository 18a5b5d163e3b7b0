"""Reliability II (issue 15): each test builds the bad input of one finding (small crafted files) and checks the
general rule behind its fix: validate type, size and header before reading or hashing; bound allocations by what
the request needs; reject non-finite inputs and detect non-finite outputs; count only committed sweep items; and
turn every failure into one named error with a clear message."""

from __future__ import annotations

import io
import math
import os
import signal
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from animatezero.io import MAX_IMAGE_PIXELS, ImageInputError, load_image
from animatezero.pipeline import fit_image
from animatezero.runlog import checkpoint_sha256
from models.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    check_checkpoint_file,
    file_sha256,
    load_motion_module,
    read_state_dict,
)
from models.config import MotionConfig
from models.synthetic import write_motion_module


@contextmanager
def no_hang(seconds: int = 30):
    """Turn a hang (the bug these tests guard against) into a test failure instead of a stuck run."""

    def fail(*_):
        raise AssertionError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mm") / "mm.ckpt"
    write_motion_module(path, MotionConfig.tiny(2), seed=0, dtype=torch.float32)
    return path


# ----------------------------------------------------------------------------------- 1. validate before hashing
def test_fifo_devzero_and_directory_are_refused_before_any_read(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "z.safetensors"
    zero.symlink_to("/dev/zero")
    folder = tmp_path / "folder.ckpt"
    folder.mkdir()
    with no_hang():
        for path, match in [(fifo, "FIFO"), (zero, "device or socket"), (folder, "is a directory")]:
            for check in (check_checkpoint_file, read_state_dict, checkpoint_sha256):
                with pytest.raises(CorruptCheckpointError, match=match):
                    check(path)
        with pytest.raises(CorruptCheckpointError, match="not a regular file"):
            file_sha256(fifo)


def test_huge_sparse_file_is_refused_from_its_header_without_hashing(tmp_path, monkeypatch):
    sparse = tmp_path / "big.safetensors"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)  # 3 GB of holes: costs no disk, but hashing it would read 3 GB
    import models.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "file_sha256", lambda *a: pytest.fail("hashed before the header was checked"))
    with pytest.raises(CorruptCheckpointError, match="safetensors header"):
        checkpoint_sha256(sparse, tmp_path)
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", 1 << 30)
    with pytest.raises(CorruptCheckpointError, match="more than any SD1.5"):
        check_checkpoint_file(sparse)


def test_pickle_suffix_with_foreign_bytes_is_refused_before_hashing(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, these are not weights")
    with pytest.raises(CorruptCheckpointError, match="does not start like a torch checkpoint"):
        checkpoint_sha256(text, tmp_path)


# ----------------------------------------------------------------------------------- 4. zip bombs
def _bomb(path: Path, inflated: int) -> None:
    """A zip-format .ckpt whose data.pkl member inflates from ~1 kB per MB to ``inflated`` bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(inflated >> 20):
                member.write(chunk)


def test_zip_bomb_ckpt_is_refused_before_unpickling(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.ckpt"
    _bomb(bomb, 64 << 20)  # 64 MiB of zeros in ~64 kB
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled a zip bomb"))
    with pytest.raises(CorruptCheckpointError, match="zip bomb"):
        read_state_dict(bomb)


def test_real_zip_checkpoints_still_load(motion_file):
    assert zipfile.is_zipfile(motion_file)
    assert read_state_dict(motion_file)  # torch.save's uncompressed members pass the ratio check


# ----------------------------------------------------------------------------------- 8. named errors from headers
@pytest.mark.parametrize(
    "header, match",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),  # over Python's int-digit limit
    ],
)
def test_hostile_safetensors_json_gives_a_checkpoint_error(tmp_path, header, match):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CorruptCheckpointError, match=match):
        read_state_dict(path)


def test_deeply_nested_pickle_gives_a_checkpoint_error(tmp_path):
    """A torch zip checkpoint whose data.pkl is {'w': [[[...]]]} nested 200,000 deep (opcodes written by hand)."""
    depth = 200_000
    deep = b"\x80\x02}X\x01\x00\x00\x00w" + b"]" * depth + b"a" * (depth - 1) + b"s."
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)
    path = tmp_path / "deep.ckpt"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, deep if info.filename.endswith("data.pkl") else src.read(info))
    with pytest.raises(CheckpointError, match="contains no tensors"):
        read_state_dict(path)


def test_integer_weights_give_a_checkpoint_error(tmp_path, motion_file):
    sd = read_state_dict(motion_file)
    key = next(k for k in sd if k.endswith("to_q.weight"))
    sd[key] = sd[key].to(torch.int8)
    bad = tmp_path / "int8.ckpt"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=f"(?s)integer or boolean.*{key}: int8"):
        load_motion_module(bad)


# ----------------------------------------------------------------------------------- 5. NaN weights
def test_nan_weights_are_rejected_at_load_with_their_names(tmp_path, motion_file):
    sd = read_state_dict(motion_file)
    keys = sorted(k for k in sd if k.endswith("to_k.weight"))[:2]
    for k in keys:
        sd[k][0, 0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=f"(?s)NaN or infinite values in 2 tensor.*{keys[0]}.*{keys[1]}"):
        load_motion_module(bad)


# ----------------------------------------------------------------------------------- 2. bounded image decode
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


# ----------------------------------------------------------------------------------- 9. images decoded by mode
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
