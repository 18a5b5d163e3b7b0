"""A run's life on disk: sweep items count only once committed, a killed writer's orphan is removed, a dead
process's run reads as interrupted, SIGTERM marks the run interrupted (docs/reliability.md, "Command line,
sweeps and runs")."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest


# ----------------------------------------------------------------------------------- sweeps count committed items
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


def test_tables_and_evaluate_count_the_same_committed_runs(tmp_path):
    from evaluation import tables
    from evaluation.runs import find_runs

    sweep = tmp_path / "sweep"
    for name in ("a_s0", "b_s0", "c_s0"):
        _run_json(sweep / "paper" / name)
    _run_json(sweep / "paper" / ".a_s0.k3j4h5g6")  # an orphan of the old naming
    _run_json(sweep / "paper" / "d_s0", status="running", host=os.uname().nodename, pid=_dead_pid())
    assert len(find_runs(sweep)) == 4  # committed folders (d_s0 among them, but not done)
    assert sorted(r.run_dir.name for r in tables.collect([sweep])) == ["a_s0", "b_s0", "c_s0"]


def test_evaluate_sweep_skips_unfinished_runs_and_reports_killed_ones(tmp_path):
    from evaluation.evaluate import evaluate_sweep

    sweep = tmp_path / "sweep"
    _run_json(sweep / "paper" / "x_s0", status="running", host=os.uname().nodename, pid=_dead_pid())
    _run_json(sweep / "paper" / "y_s0", status="failed")
    _run_json(sweep / "paper" / ".y_s0.partial-h-1-abc")
    rows = evaluate_sweep(sweep, "first_frame")
    summary = json.loads((sweep / "metrics_summary.json").read_text())
    assert rows == [] and summary["not_done"] == {"paper/x_s0": "interrupted", "paper/y_s0": "failed"}


# ----------------------------------------------------------------------------------- run.json after a kill
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
