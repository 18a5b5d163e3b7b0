"""scripts/benchmark.py --few-step-only on the CPU at tiny size (as a subprocess): every few-step case is timed in
interleaved rounds, the speed-ups are reported, and an unknown case is refused. Timings on a shared CPU say nothing;
the figures are in docs/fewstep.md §4."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(tmp_path, *extra):
    argv = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--device", "cpu", "--size", "tiny"]
    argv += ["--height", "64", "--width", "64", "--frames", "2", "--steps", "2", "--few-steps", "2", "--threads", "1"]
    argv += ["--repeats", "2", "--warmup", "0", "--few-step-only", "--cache-dir", str(tmp_path / "cache"), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_few_step_benchmark_reports_every_case_interleaved(tmp_path):
    out = tmp_path / "fs.json"
    proc = bench(tmp_path, "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    fs = json.loads(out.read_text())["few_step"]
    cases = ["step_ddim_guided", "step_lcm", "step_euler", "animatezero_ddim_2", "animatezero_lcm_2",
             "animatezero_euler_2", "animatezero_lcm_2_g2"]  # fmt: skip
    assert list(fs["median_s"]) == cases and all(len(fs["times_s"][c]) == 2 for c in cases)
    assert set(fs["ratios"]) == {
        "step_speedup_lcm", "step_speedup_euler", "animatezero_speedup_lcm_2", "animatezero_speedup_euler_2"
    }  # fmt: skip
    assert fs["ratios"]["step_speedup_lcm"] == fs["median_s"]["step_ddim_guided"] / fs["median_s"]["step_lcm"]
    # interleaved: round 0 of every case is logged before round 1 of any
    rounds = [line.split()[3] for line in proc.stderr.splitlines() if "few-step round" in line]
    assert rounds == ["0"] * len(cases) + ["1"] * len(cases)
    assert fs["target_animatezero_lcm_4_le_0_5_s"] is None  # only measured on CUDA at 512x512x16, 4 steps


def test_unknown_case_is_refused(tmp_path):
    proc = bench(tmp_path, "--few-step-cases", "step_dpm")
    assert proc.returncode != 0 and "unknown ['step_dpm']" in proc.stderr
