"""Reliability II (issue 15): each test builds the bad input of one finding (small crafted files) and checks the
general rule behind its fix: validate type, size and header before reading or hashing; bound allocations by what
the request needs; reject non-finite inputs and detect non-finite outputs; count only committed sweep items; and
turn every failure into one named error with a clear message."""

from __future__ import annotations

import io
import json
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

from animatezero.applications import fit_image
from animatezero.hub import checkpoint_sha256
from animatezero.io import MAX_IMAGE_PIXELS, ImageInputError, load_image
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
    assert load_image(path, size=(256, 384)).shape == (3, 512, 768)  # 1/2: covers 384 in either orientation


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


# ----------------------------------------------------------------------------------- 3. sweeps count committed items
def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _run_json(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"status": "done", "configuration": "paper", **fields}))


def test_killed_sweep_leaves_no_countable_run_and_its_orphan_is_removed(tmp_path):
    """A process killed (SIGKILL) inside atomic_path, just after writing an item's done run.json."""
    import subprocess
    import sys

    from animatezero.io import remove_orphans
    from evaluation.runs import find_runs

    item = tmp_path / "sweep" / "paper" / "cat_s0"
    code = (
        "import json, os, signal, sys\n"
        "from animatezero.io import atomic_path\n"
        "with atomic_path(sys.argv[1], directory=True) as tmp:\n"
        "    (tmp / 'run.json').write_text(json.dumps({'status': 'done'}))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(item)], check=False)
    _run_json(tmp_path / "sweep" / "paper" / "dog_s0")
    (leftover,) = [p for p in item.parent.iterdir() if p.name.startswith(".")]
    assert (leftover / "run.json").is_file()  # the orphan holds a finished run.json ...
    assert find_runs(tmp_path / "sweep") == [tmp_path / "sweep" / "paper" / "dog_s0"]  # ... that is not counted

    live = item.parent / f".x{leftover.name[leftover.name.index('.partial-') :].rsplit('-', 2)[0]}-{os.getpid()}-abc"
    live.mkdir()  # an entry of a process still writing (this one) is kept
    assert remove_orphans(tmp_path / "sweep") == [leftover]
    assert not leftover.exists() and live.exists()


def test_the_next_sweep_run_cleans_up_orphans(tmp_path):
    from experiments.runs import prepare_run_dir

    orphan = tmp_path / "sweep" / "paper" / f".cat_s0.partial-{os.uname().nodename}-{_dead_pid()}-k3j4h5g6"
    _run_json(orphan)
    prepare_run_dir(tmp_path / "sweep", overwrite=True)  # what experiments/sweep.py does first
    assert not orphan.exists() and (tmp_path / "sweep" / "paper").is_dir()


def test_make_tables_and_evaluate_count_the_same_committed_runs(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from evaluation.runs import find_runs

    sweep = tmp_path / "sweep"
    for name in ("a_s0", "b_s0", "c_s0"):
        _run_json(sweep / "paper" / name)
    _run_json(sweep / "paper" / ".a_s0.k3j4h5g6")  # an orphan of the old naming
    _run_json(sweep / "paper" / "d_s0", status="running", host=os.uname().nodename, pid=_dead_pid())
    spec = importlib.util.spec_from_file_location("make_tables", Path(__file__).parents[1] / "scripts/make_tables.py")
    make_tables = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_tables", make_tables)  # its dataclasses look their module up
    spec.loader.exec_module(make_tables)
    assert len(find_runs(sweep)) == 4  # committed folders (d_s0 among them, but not done)
    assert sorted(r.run_dir.name for r in make_tables.collect([sweep])) == ["a_s0", "b_s0", "c_s0"]


def test_evaluate_sweep_skips_unfinished_runs_and_reports_killed_ones(tmp_path):
    from evaluation.evaluate import evaluate_sweep

    sweep = tmp_path / "sweep"
    _run_json(sweep / "paper" / "x_s0", status="running", host=os.uname().nodename, pid=_dead_pid())
    _run_json(sweep / "paper" / "y_s0", status="failed")
    _run_json(sweep / "paper" / ".y_s0.partial-h-1-abc")
    rows = evaluate_sweep(sweep, "first_frame")
    summary = json.loads((sweep / "metrics_summary.json").read_text())
    assert rows == [] and summary["not_done"] == {"paper/x_s0": "interrupted", "paper/y_s0": "failed"}


# ----------------------------------------------------------------------------------- 12. run.json after a kill
def test_running_run_json_of_a_dead_process_reads_as_interrupted(tmp_path):
    from evaluation.runs import run_status
    from experiments.runs import read_run

    _run_json(tmp_path / "dead", status="running", host=os.uname().nodename, pid=_dead_pid())
    _run_json(tmp_path / "alive", status="running", host=os.uname().nodename, pid=os.getpid())
    assert read_run(tmp_path / "dead")["status"] == "interrupted" == run_status(read_run(tmp_path / "dead"))
    assert read_run(tmp_path / "alive")["status"] == "running"


def test_sigterm_marks_the_run_interrupted(tmp_path):
    import time

    from experiments.runs import RunRecord, Terminated

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        record = RunRecord(tmp_path, kind="generate")
        record.write()
        assert json.loads((tmp_path / "run.json").read_text())["pid"] == os.getpid()
        with pytest.raises(Terminated):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal arrives first
            except BaseException as e:
                record.failed(e)
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "interrupted" and "Terminated" in run["error"]


def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    import stat as stat_

    from animatezero.io import write_json

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat_.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_json(tmp_path / "run.json", {"status": "done"})
    assert False in synced and True in synced  # the file's data, then the folder entry of the rename


# ----------------------------------------------------------------------------------- 8. disk full
def test_disk_full_while_writing_an_output_is_a_named_error(tmp_path, monkeypatch):
    import errno

    from animatezero.io import OutputWriteError, save_image
    from experiments.runs import OutputDirError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OutputWriteError, match="No space left on device; free some disk space") as info:
        save_image(torch.zeros(3, 8, 8), tmp_path / "image.png")
    assert isinstance(info.value, OutputDirError)  # the CLI prints it as one line, exit status 2
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


# ----------------------------------------------------------------------------------- 10. output names
@pytest.mark.parametrize(
    "files, match",
    [
        ({"gif": "frames/x.gif", "frames": "frames"}, "lies inside paths.run_files.frames"),
        ({"video": "out.mp4", "gif": "./out.mp4"}, "are the same path"),
    ],
)
def test_colliding_output_names_are_refused(tmp_path, files, match):
    from experiments.runs import OutputPathError, distinct_outputs

    with pytest.raises(OutputPathError, match=match):
        distinct_outputs({k: tmp_path / v for k, v in files.items()})
    distinct_outputs({"gif": tmp_path / "frames.gif", "frames": tmp_path / "frames"})  # side by side is fine


# ----------------------------------------------------------------------------------- 5, 12. pipeline arguments
SIZE = 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guidance_scale": float("inf")}, "guidance_scale must be >= 0 and finite"),
        ({"latents": torch.full((1, 4, 8, 8), float("nan"))}, "latents contain NaN"),
        ({"latents": torch.full((1, 4, 8, 8), float("inf"))}, "latents contain NaN"),
        ({"seed": 1.5}, r"seed must be a whole number in 0..2\*\*64-1, got 1.5"),
        ({"seed": True}, "seed must be a whole number"),
        ({"seed": 2**64}, "out of range"),
        ({"seed": -1}, "out of range"),
    ],
)
def test_bad_inputs_are_refused_before_any_sampling(tiny_pipe, kwargs, match, monkeypatch):
    monkeypatch.setattr(tiny_pipe.runner, "forward", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(ValueError, match=match):
        tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=2, **kwargs)


def test_largest_seed_is_accepted(tiny_pipe):
    assert tiny_pipe.noise((1, 4, 2, 2), 2**64 - 1).shape == (1, 4, 2, 2)


def test_non_finite_results_raise_instead_of_black_frames(tiny_pipe, monkeypatch):
    from animatezero.pipeline import NonFiniteError

    monkeypatch.setattr(tiny_pipe.runner, "forward", lambda x, *a, **k: torch.full_like(x, float("nan")))
    with pytest.raises(NonFiniteError, match="NaN or infinite latents"):
        tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=2, seed=0)
    with pytest.raises(NonFiniteError):
        tiny_pipe.text_to_video("x", num_frames=2, height=SIZE, width=SIZE, steps=1, seed=0)


@pytest.mark.parametrize("fps", [-5, 0, 2.5])
def test_bad_fps_fails_before_writing(tmp_path, fps):
    from animatezero.io import save_video
    from animatezero.results import VideoResult

    video = VideoResult(frames=torch.zeros(2, 3, 8, 8), latents=torch.zeros(1, 4, 2, 1, 1), prompt="", seed=0)
    with pytest.raises(ValueError, match="fps must be a whole number"):
        video.save(tmp_path / "v.gif", fps=fps)
    with pytest.raises(ValueError, match="fps must be a whole number"):
        save_video(video.frames, tmp_path / "v.mp4", fps=fps)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- CLI (debug=tiny)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_cache")


def cli_run(argv: list[str], tmp_path: Path, tiny_cache: Path, monkeypatch) -> Path:
    """Run the ``animatezero`` console script as typed in a shell; returns the run directory."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from experiments import generate as gen

    run_dir = tmp_path / "run"
    argv = ["animatezero", "debug=tiny", f"paths.cache_dir={tiny_cache}", *argv, f"out_dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        gen.main()
    finally:
        GlobalHydra.instance().clear()
    return run_dir


@pytest.mark.parametrize("prompt", ["draw ${oc.env:SECRET_TOKEN}", "price $5 ${", "a \\${x} and ${y}"])
def test_prompts_are_taken_as_typed(tmp_path, tiny_cache, monkeypatch, prompt):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    run_dir = cli_run(
        [f"prompt={prompt}", "sampler.num_frames=2", "controls=animatediff"], tmp_path, tiny_cache, monkeypatch
    )
    text = (run_dir / "run.json").read_text()
    run = json.loads(text)
    assert run["status"] == "done" and run["prompt"] == prompt and run["config"]["prompt"] == prompt
    assert "hunter2" not in text


def test_nan_frames_make_a_failed_run_with_the_reason(tmp_path, tiny_cache, monkeypatch):
    from models.runner import UNetRunner

    monkeypatch.setattr(UNetRunner, "__call__", lambda self, x, t, context: torch.full_like(x, float("nan")))
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["prompt=x", "sampler.num_frames=2", "controls=animatediff"], tmp_path, tiny_cache, monkeypatch)
    assert exit_info.value.code == 2
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["error"].startswith("NonFiniteError: sampling produced NaN")
    assert "quick_metrics" not in run and not (tmp_path / "run" / "video.mp4").exists()


@pytest.mark.parametrize(
    "override, match",
    [
        ("paths.run_files.gif=frames/x.gif", "lies inside paths.run_files.frames"),
        ("candidates=-1", "candidates"),
        ("extend=-1", "extend"),
        ("seed=1.5", "seed"),
        ("sampler.fps=-5", "fps"),
        ("sampler.guidance_scale=inf", "guidance"),
    ],
)
def test_bad_cli_values_fail_before_any_weights_are_loaded(tmp_path, tiny_cache, monkeypatch, capsys, override, match):
    from experiments import common

    monkeypatch.setattr(common, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights despite a bad value"))
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["prompt=x", override], tmp_path, tiny_cache, monkeypatch)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and match in err and "Traceback" not in err


# ----------------------------------------------------------------------------------- 7. hub pins
def test_default_hub_files_are_pinned_and_verified(tmp_path, monkeypatch):
    import huggingface_hub

    from animatezero import hub

    fake = tmp_path / "downloaded.ckpt"
    fake.write_bytes(b"not the published file")
    seen = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        seen.append((repo_id, filename, revision))
        return str(fake)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for ref in (hub.DEFAULT_CHECKPOINT, hub.DEFAULT_MOTION_MODULE):
        with pytest.raises(hub.DownloadError, match=f"expected {hub.PINS[ref].sha256}"):
            hub.resolve(ref, cache_dir=tmp_path)
    assert seen[0][2] == hub.PINS[hub.DEFAULT_CHECKPOINT].revision  # downloaded at the pinned commit
    assert all(len(pin.sha256) == 64 for pin in hub.PINS.values())
    good = hub.Pin(sha256=file_sha256(fake))
    monkeypatch.setitem(hub.PINS, "org/repo/file.ckpt", good)
    assert hub.resolve("org/repo/file.ckpt", cache_dir=tmp_path) == fake


def test_sweep_refuses_colliding_output_names_before_any_work(tmp_path, tiny_cache, monkeypatch, capsys):
    """The sweep's OutputPathError reaches the user as one line and exit status 2, before weights are touched."""
    import sys

    from experiments import common
    from experiments import sweep as sw

    monkeypatch.setattr(common, "ensure_synthetic", lambda *a, **k: pytest.fail("work started"))
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tiny_cache}", f"sweep_dir={tmp_path / 's'}"]
    monkeypatch.setattr(sys, "argv", [*argv, "paths.run_files.gif=frames/x.gif"])
    from hydra.core.global_hydra import GlobalHydra

    try:
        with pytest.raises(SystemExit) as exit_info:
            sw.main()
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "lies inside paths.run_files.frames" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["fifo", "devzero", "directory"])
def test_cli_refuses_a_non_file_checkpoint_at_once(tmp_path, tiny_cache, monkeypatch, capsys, kind):
    path = tmp_path / "z.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "devzero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with no_hang(), pytest.raises(SystemExit) as exit_info:
        cli_run(["prompt=x", f"checkpoint={path}"], tmp_path, tiny_cache, monkeypatch)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and str(path) in err and "Traceback" not in err
    assert ("is a directory" if kind == "directory" else "not a regular file") in err
