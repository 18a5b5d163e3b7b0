"""scripts/gpu_check.py, run as on the device machine: the dry run (CPU, tiny) writes its JSON and Markdown, and an
unknown part is refused. Its runner (``tests/timebox.py``): a part past its time box is killed and recorded
while the next part still runs."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.timebox import Part, run_parts

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "out"
    argv = ["--dry-run", "--out", str(out), "--parts", "environment", "gpu_tests", "--cache-dir", str(tmp_path / "c")]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *argv], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] is True
    assert set(summary["parts"]) == {"wheels", "environment", "gpu_tests"}
    assert summary["parts"]["environment"]["status"] == "passed"
    assert summary["environment"]["torch"]  # the probe's versions were parsed
    gpu_tests = summary["parts"]["gpu_tests"]
    if torch.cuda.is_available():
        assert gpu_tests["status"] == "passed", gpu_tests
    else:  # collected and every one skipped: reported as skipped, not passed
        assert gpu_tests["status"] == "skipped" and "every test skipped" in gpu_tests["reason"], gpu_tests
    assert summary["parts"]["wheels"]["missing"] == []  # this environment has diffusers & co.
    text = (out / "gpu_check.md").read_text()
    assert text == summary["markdown"] and "dry run" in text
    assert "| environment | passed |" in text and f"| gpu_tests | {gpu_tests['status']} |" in text
    assert "===== gpu_tests" in (out / "gpu_check.log").read_text()


def test_time_box_kills_a_part_and_the_rest_still_runs(tmp_path):
    code = "import sys; print(' '.join(sys.argv[1:]) or 'ok')"
    parts = [
        Part("hangs", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2),
        Part("needs_missing", [sys.executable, "-c", "pass"], 30, needs=("diffusers",)),
        Part("without_it", [sys.executable, "-c", code], 30, min_s=1, needs=("diffusers",), if_missing=("--plain",)),
        Part("quick", [sys.executable, "-c", code], 30, min_s=1),
        Part("fails", [sys.executable, "-c", "raise SystemExit(3)"], 30, min_s=1),
        Part("no_time_left", [sys.executable, "-c", "pass"], 30, min_s=10_000),
        Part("all_skipped", [sys.executable, "-c", "print('===== 3 skipped in 0.12s =====')"], 30),
        Part("some_passed", [sys.executable, "-c", "print('1 passed, 2 skipped in 0.12s')"], 30),
    ]
    with open(tmp_path / "log", "w") as log:
        results = run_parts(parts, 600, {}, log, missing=["diffusers"], cwd=tmp_path)
    assert results["hangs"]["status"] == "timed_out" and results["hangs"]["returncode"] is None
    assert "started" in results["hangs"]["output_tail"] and results["hangs"]["seconds"] < 30
    assert results["needs_missing"] == {"status": "skipped", "reason": "diffusers not importable"}
    assert results["without_it"]["status"] == "passed" and "--plain" in results["without_it"]["output_tail"]
    assert results["without_it"]["note"] == "diffusers missing: run with --plain"
    assert results["quick"]["status"] == "passed" and "ok" in results["quick"]["output_tail"]
    assert results["fails"]["status"] == "failed" and results["fails"]["returncode"] == 3
    assert results["no_time_left"]["status"] == "skipped"
    assert results["all_skipped"]["status"] == "skipped" and "3 skipped" in results["all_skipped"]["reason"]
    assert results["some_passed"]["status"] == "passed"
    assert "===== hangs" in (tmp_path / "log").read_text()


def test_unknown_part_is_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "o"), "--parts", "nonsense"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "unknown parts ['nonsense']" in done.stderr
