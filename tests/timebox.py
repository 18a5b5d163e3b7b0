"""Commands run one after another, each in its own process group under its own time box, within an overall budget:
a part that fails, hangs or runs out of time is killed (with anything it started) and recorded, and the next part
still runs. The runner of ``scripts/gpu_check.py``'s device check (which runs the GPU tests), where a hung CUDA call
must not cost the rest. Standard library only: the device image has torch but not the project's other packages
(hydra, omegaconf), and this module must import there (as ``tests/oracle.py``, it lives beside the tests it runs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAIL = 4000  # characters of each part's output kept in its result


@dataclass
class Part:
    """One step: ``argv`` run within ``box_s`` seconds. ``report``: a JSON file the part writes (read back into its
    result); ``needs``: importable modules without which it is skipped, or, with ``if_missing``, run with those extra
    arguments instead (e.g. a benchmark without its optional baseline); ``min_s``: not started with less time than
    this left in the overall budget."""

    name: str
    argv: list[str]
    box_s: float
    report: Path | None = None
    needs: tuple[str, ...] = ()
    min_s: float = 10.0
    note: str = ""
    if_missing: tuple[str, ...] = ()
    result: dict[str, Any] = field(default_factory=dict)


def run_part(part: Part, timeout: float, env: dict[str, str], log, cwd: Path | None = None) -> dict[str, Any]:
    """Run one part in its own process group from ``cwd``; kill the whole group at ``timeout``. Its full output goes to
    ``log``; the result holds the status (``passed``, ``failed``, ``timed_out``), seconds, exit code, the end of the
    output and the part's report."""
    start = time.perf_counter()
    log.write(f"\n===== {part.name}: {' '.join(part.argv)[:500]}\n")
    log.flush()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            part.argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and anything it started
            proc.wait()
            rc, status = None, "timed_out"
        out.seek(0)
        text = out.read()
    log.write(text)
    log.flush()
    result: dict[str, Any] = {
        "status": status,
        "seconds": round(time.perf_counter() - start, 1),
        "time_box_s": round(timeout, 1),
        "returncode": rc,
        "output_tail": text[-TAIL:],
    }
    if status == "passed" and (skipped := _all_skipped(text)):
        result.update(status="skipped", reason=f"every test skipped ({skipped})")  # ran nothing: not a pass
    if part.report is not None and part.report.exists():
        try:
            result["report"] = json.loads(part.report.read_text())
        except json.JSONDecodeError as e:
            result["report_error"] = str(e)
    return result


def _all_skipped(output: str) -> str | None:
    """pytest's summary line (``6 skipped in 1.2s``) when it counts skipped tests and none that passed, else None."""
    lines = [ln.strip(" =") for ln in output.strip().splitlines() if ln.strip()]
    words = re.findall(r"\d+ (\w+)", lines[-1] if lines else "")
    return lines[-1] if "skipped" in words and "passed" not in words else None


def run_parts(
    parts: list[Part], budget_s: float, env: dict[str, str], log, missing: list[str], cwd: Path | None = None
) -> dict[str, dict]:
    """Run ``parts`` in order within ``budget_s`` seconds overall; each gets ``min(its box, time left)``. ``missing``:
    the modules that do not import (a part needing one is skipped with that reason, or run with its ``if_missing``
    arguments)."""
    deadline = time.perf_counter() + budget_s
    results = {}
    for part in parts:
        left = deadline - time.perf_counter()
        absent = [m for m in part.needs if m in missing]
        if absent and part.if_missing:
            part.argv = [*part.argv, *part.if_missing]
            part.note = f"{', '.join(absent)} missing: run with {' '.join(part.if_missing)}"
        elif absent:
            results[part.name] = {"status": "skipped", "reason": f"{', '.join(absent)} not importable"}
            continue
        if left < part.min_s:
            results[part.name] = {"status": "skipped", "reason": f"{left:.0f} s left of the budget, needs {part.min_s}"}
            continue
        results[part.name] = run_part(part, min(part.box_s, left), env, log, cwd)
        if part.note:
            results[part.name]["note"] = part.note
        done = results[part.name]
        print(f"[timebox] {part.name}: {done['status']} in {done['seconds']} s", file=sys.stderr)
    return results
