"""Checkpoint files that are not what they claim: each test builds the bad file (small crafted files) and checks it
gets one named error before it is read whole, hashed or unpickled, and that real files still load
(docs/reliability.md, "Weight files")."""

from __future__ import annotations

import io
import os
import signal
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from animatezero.hub import checkpoint_sha256
from models.config import MotionConfig
from models.loading import load_motion_module
from models.readers import CheckpointError, CorruptCheckpointError, check_checkpoint_file, file_sha256, read_state_dict
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


# ----------------------------------------------------------------------------------- validate before hashing
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
    import models.readers as ckpt

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


# ----------------------------------------------------------------------------------- zip bombs
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


# ----------------------------------------------------------------------------------- named errors from headers
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
    with pytest.raises(CheckpointError, match="nest deeper than 32 levels"):
        read_state_dict(path)


def test_integer_weights_give_a_checkpoint_error(tmp_path, motion_file):
    sd = read_state_dict(motion_file)
    key = next(k for k in sd if k.endswith("to_q.weight"))
    sd[key] = sd[key].to(torch.int8)
    bad = tmp_path / "int8.ckpt"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=f"(?s)integer or boolean.*{key}: int8"):
        load_motion_module(bad)


# ----------------------------------------------------------------------------------- NaN weights
def test_nan_weights_are_rejected_at_load_with_their_names(tmp_path, motion_file):
    sd = read_state_dict(motion_file)
    keys = sorted(k for k in sd if k.endswith("to_k.weight"))[:2]
    for k in keys:
        sd[k][0, 0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=f"(?s)NaN or infinite values in 2 tensor.*{keys[0]}.*{keys[1]}"):
        load_motion_module(bad)



@pytest.mark.parametrize("kind", ["fifo", "devzero", "directory"])
def test_cli_refuses_a_non_file_checkpoint_at_once(tmp_path, tiny_cache, monkeypatch, capsys, kind):
    from experiments import generate as gen
    from tests.console import run_main

    path = tmp_path / "z.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    argv = ["animatezero", "debug=tiny", f"paths.cache_dir={tiny_cache}", "prompt=x", f"checkpoint={path}"]
    with no_hang():
        code, _, err = run_main(gen.main, [*argv, f"out_dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err
    assert ("is a directory" if kind == "directory" else "not a regular file") in err
    assert not (tmp_path / "run").exists()
