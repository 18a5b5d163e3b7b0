"""run.json on a full disk: the run ends ``failed`` naming the output that could not be written (not ``running``, read
back as ``interrupted``, with an error about run.json itself)."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from animatezero import io
from experiments import common
from experiments import generate as gen
from experiments.runs import RESERVE, OutputWriteError, RunRecord, read_run, rewrite_in_place

CONFIGS = Path(__file__).resolve().parents[1] / "configs"



def tiny_cfg(cache, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("generate", overrides=["debug=tiny", f"paths.cache_dir={cache}", "prompt=x", *overrides])


def disk_full(monkeypatch):
    """From ``fill()`` on, creating any file fails with ENOSPC, as on a full disk (every output, and run.json, is
    written through a new temporary entry made by ``tempfile.mkdtemp``); existing files can still be overwritten
    within their size, as on a real full disk."""
    state = {"full": False}
    real = io.tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkdtemp", mkdtemp)
    return lambda: state.update(full=True)


def test_disk_filling_up_while_writing_outputs_ends_failed_naming_the_output(tmp_path, tiny_cache, monkeypatch):
    fill = disk_full(monkeypatch)
    real_write = common.write_outputs

    def write_outputs(*args, **kwargs):
        fill()  # the disk fills up just as the outputs are written
        return real_write(*args, **kwargs)

    monkeypatch.setattr(common, "write_outputs", write_outputs)
    out = tmp_path / "run"
    with pytest.raises(OutputWriteError, match=r"image\.png.*No space left on device"):  # the output, not run.json
        gen.generate(tiny_cfg(tiny_cache, f"out_dir={out}"))
    run = read_run(out)
    assert run is not None and run["status"] == "failed"
    assert "image.png" in run["error"] and "No space left" in run["error"] and "run.json" not in run["error"]
    assert run["finished"] and run["prompt"] == "x" and run["config"]["prompt"] == "x"  # the whole record


def test_a_running_run_json_keeps_room_for_its_final_status(tmp_path):
    record = RunRecord(tmp_path, kind="generate")
    record.write()
    running = (tmp_path / "run.json").read_text()
    assert json.loads(running)["status"] == "running" and running.endswith(" " * RESERVE + "\n")
    record.done()
    assert not (tmp_path / "run.json").read_text().endswith("  \n")  # a finished one is plain JSON


def test_failed_never_raises_and_cuts_the_record_only_when_it_must(tmp_path, monkeypatch):
    error = OutputWriteError(f"cannot write '{tmp_path / 'video.mp4'}': No space left on device")
    record = RunRecord(tmp_path, kind="generate", config={"big": "x" * 5000})
    record.write()
    disk_full(monkeypatch)()
    assert record.failed(error) == tmp_path / "run.json"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "failed" and "video.mp4" in run["error"] and run["config"]["big"] == "x" * 5000

    # a run.json without the reserve (written by an older version): the record without its config still fits
    old = tmp_path / "old"
    old.mkdir()
    record = RunRecord(old, kind="generate", config={"big": "x" * 5000})
    (old / "run.json").write_text(json.dumps(record.data, indent=2))
    record.failed(KeyboardInterrupt())
    run = json.loads((old / "run.json").read_text())
    assert run["status"] == "interrupted" and "config" not in run and run["kind"] == "generate"


def test_rewrite_in_place_never_grows_the_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("x" * 100)
    assert not rewrite_in_place(path, "y" * 101) and path.read_text() == "x" * 100
    assert rewrite_in_place(path, "z" * 40) and path.read_text() == "z" * 40
    assert not rewrite_in_place(tmp_path / "missing.json", "{}")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("size", ["60k", "24k"])
def test_a_real_small_disk(tmp_path, tiny_cache, size):
    """On a real tmpfs of a few tens of KB (root only: where mounting is not allowed this test is skipped; the
    simulated one above covers the logic everywhere)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, size):
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = disk / "run"
        with pytest.raises(OutputWriteError) as error:
            gen.generate(tiny_cfg(tiny_cache, f"out_dir={out}", "sampler.num_frames=8"))
        run = read_run(out)
        if "run.json" in str(error.value):  # too small for even the first run.json: nothing is left behind
            assert run is None and not out.exists()
        else:
            assert run["status"] == "failed" and str(error.value) in run["error"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
