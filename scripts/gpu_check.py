"""One prepared device check: GPU tests, full-size parity, the eager and compiled benchmark and peak memory, in at most
8 minutes, written as JSON and Markdown into one folder.

    python scripts/gpu_check.py --out DIR [--budget 470] [--dry-run] [--parts NAME ...] [--cache-dir DIR]

Each part runs in its own subprocess under its own time box (and never past the overall ``--budget``): a part that
fails, hangs or runs out of time is killed and recorded (``timed_out``), and the next part still runs. Parts, in
order (the most wanted first, so a slow machine loses the least):

  environment      GPU, driver, Python, torch, diffusers versions
  wheels           where diffusers / open_clip_torch / ftfy / wcwidth do not import and a ``.whl/`` folder sits in
                   the repository root: ``pip install --no-index --no-deps --target`` them (the subprocesses get that
                   folder on ``PYTHONPATH``); still missing: the diffusers parts are skipped with that reason
  checkpoints      the synthetic full-size SD1.5 + motion v2 files (``tests/oracle.py``), written once
  gpu_tests        ``pytest -m gpu tests/test_gpu.py -k "not compiled"`` (fp16/bf16 first-frame promise, fast path)
  parity_fp16      ``scripts/parity_full.py --dtypes fp16``: full-size ours vs diffusers, component by component
  bench_eager      ``scripts/benchmark.py``: our text-to-video, AnimateZero (separate and lockstep), diffusers'
                   text-to-video, per-run peak memory (``torch.cuda.max_memory_allocated``)
  bench_compiled   ``scripts/benchmark.py --compile default --compile-only --compile-runs text_to_video``: the
                   compiled text-to-video, its first run on an empty Inductor cache and on a warm cache reported apart
  gpu_tests_compiled  the compiled-equals-eager GPU tests (``compile="default"`` and ``"reduce-overhead"``, tiny)
  parity_fp32      ``scripts/parity_full.py --dtypes fp32`` (TF32 off), if time is left

Writes ``gpu_check.json`` (every part: status, seconds, exit code, the end of its output, its own JSON report),
``gpu_check.md`` (the tables) and ``gpu_check.log`` (every part's full output) into ``--out``: three files, within
what a device call brings back. ``--dry-run`` runs the same parts on the CPU at the tiny size with one step (fp32
for the fp16 parity, the compile part traced with the ``eager`` backend instead of Inductor): a check of this script,
not a measurement. The exit status is 0 when every part that ran passed or was skipped for a recorded reason.

On the device machine (the wheels carried in ``.whl``)::

    scripts/gpu_check.sh --out "$OUT"
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.timebox import TAIL, Part, run_parts  # noqa: E402  (standard library only, as the device needs)

OPTIONAL = ("diffusers", "open_clip", "ftfy", "wcwidth")  # missing from the device image (import names)


def python() -> list[str]:
    return [sys.executable, "-u"]


def env_probe() -> str:
    """A one-liner printing the environment as JSON (run as a part, so a broken CUDA init cannot stop the check)."""
    return (
        "import json, platform, importlib.util as u, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "mods = {m: u.find_spec(m) is not None for m in " + repr(OPTIONAL) + "}\n"
        "ver = {}\n"
        "for m in ('diffusers', 'transformers'):\n"
        "    try:\n"
        "        ver[m] = __import__(m).__version__\n"
        "    except Exception as e:\n"
        "        ver[m] = None\n"
        "print(json.dumps({'date': __import__('datetime').datetime.now().astimezone().isoformat(timespec='seconds'),\n"
        "    'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
        "    'gpu': torch.cuda.get_device_name(0) if cuda else None,\n"
        "    'gpu_mem_gib': torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,\n"
        "    'cudnn': torch.backends.cudnn.version() if cuda else None, 'modules': mods, **ver}))\n"
    )


def missing_modules(env: dict[str, str]) -> list[str]:
    """The optional modules that do not import in a fresh interpreter with ``env`` (one probe process)."""
    code = (
        "import importlib\n"
        f"for m in {OPTIONAL!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception:\n"
        "        print(m)\n"
    )
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    return probe.stdout.split()


def install_wheels(env: dict[str, str], site: Path) -> dict[str, Any]:
    """Install ``.whl/*.whl`` into ``site`` when an optional module is missing; put ``site`` on ``env``'s path."""
    missing = missing_modules(env)
    info: dict[str, Any] = {"missing_before": missing}
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if missing and wheels:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        cmd += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        info.update(pip_rc=done.returncode, pip_output=(done.stdout + done.stderr)[-TAIL:], wheels=len(wheels))
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
        missing = missing_modules(env)
    elif missing:
        info["note"] = "no .whl folder in the repository root"
    info["missing"] = missing
    return info


def plan(args: argparse.Namespace, work: Path) -> list[Part]:
    """The parts, full size on CUDA or tiny on the CPU (``--dry-run``)."""
    cache = ["--cache-dir", str(args.cache_dir)]
    size = "tiny" if args.dry_run else "full"
    if args.dry_run:
        shape = [
            "--device",
            "cpu",
            "--height",
            "64",
            "--width",
            "64",
            "--frames",
            "2",
            "--steps",
            "1",
            "--threads",
            "1",
        ]
        bench = ["--size", "tiny", *shape, "--repeats", "1", "--warmup", "0"]
        parity = ["--size", "tiny", *shape]
        compiled = ["--compile", "default", "--compile-backend", "eager"]
        half = "fp32"  # fp16 convolutions on a CPU are slow or missing; the dry run checks the plumbing
    else:
        bench = ["--device", "cuda", "--size", "full", "--repeats", "2", "--warmup", "1"]
        parity = ["--device", "cuda", "--size", "full"]
        compiled = ["--compile", "default"]
        half = "fp16"
    bench_py, parity_py = str(ROOT / "scripts" / "benchmark.py"), str(ROOT / "scripts" / "parity_full.py")
    pytest_gpu = [*python(), "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"]
    write_ckpt = f"from tests import oracle; print(oracle.synthetic_checkpoints({size!r}, {str(args.cache_dir)!r}))"
    return [
        Part("environment", [*python(), "-c", env_probe()], 60, min_s=5),
        Part("checkpoints", [*python(), "-c", write_ckpt], 150, min_s=20),
        Part("gpu_tests", [*pytest_gpu, "-k", "not compiled"], 120),
        Part(
            "parity_fp16",
            [*python(), parity_py, *parity, "--dtypes", half, *cache, "--json", str(work / "parity_fp16.json")],
            110,
            report=work / "parity_fp16.json",
            needs=("diffusers",),
            note="" if half == "fp16" else "dry run: fp32 instead of fp16",
        ),
        Part(
            "bench_eager",
            [*python(), bench_py, *bench, *cache, "--json", str(work / "bench_eager.json")],
            200,
            report=work / "bench_eager.json",
            needs=("diffusers",),
            if_missing=("--no-diffusers",),  # ours still runs; only the diffusers baseline is dropped
        ),
        Part(
            "bench_compiled",
            [*python(), bench_py, *bench, *compiled, "--compile-only", "--compile-runs", "text_to_video", *cache]
            + ["--json", str(work / "bench_compiled.json")],
            240,
            report=work / "bench_compiled.json",
            min_s=60,
        ),
        Part("gpu_tests_compiled", [*pytest_gpu, "-k", "compiled"], 150, min_s=60),
        Part(
            "parity_fp32",
            [*python(), parity_py, *parity, "--dtypes", "fp32", *cache, "--json", str(work / "parity_fp32.json")],
            120,
            report=work / "parity_fp32.json",
            needs=("diffusers",),
            min_s=60,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------- report
def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def environment_of(results: dict[str, dict]) -> dict[str, Any]:
    env = results.get("environment", {})
    if env.get("status") != "passed":
        return {}
    try:
        return json.loads(env["output_tail"].strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {}


def markdown(summary: dict[str, Any]) -> str:
    env, parts = summary["environment"], summary["parts"]
    lines = [
        f"## GPU check{' (dry run, CPU, tiny: not a measurement)' if summary['dry_run'] else ''}",
        "",
        f"{env.get('date', summary['date'])}; GPU {env.get('gpu') or '–'}; Python {env.get('python', '–')}, torch "
        f"{env.get('torch', '–')} (CUDA {env.get('cuda') or '–'}), diffusers {env.get('diffusers') or '–'}; "
        f"budget {summary['budget_s']} s, used {summary['seconds']} s",
        "",
        "| part | status | s | note |",
        "|---|---|---:|---|",
    ]
    for name, r in parts.items():
        note = r.get("reason") or r.get("note") or ""
        lines.append(f"| {name} | {r['status']} | {_fmt(r.get('seconds'))} | {note} |")
    for name in ("parity_fp16", "parity_fp32"):
        report = parts.get(name, {}).get("report")
        if report:
            lines += ["", f"### {name}: max |ours - diffusers| / max |diffusers|", ""]
            lines += ["| component | max abs | scale | rel |", "|---|---:|---:|---:|"]
            for dtype, comps in report["results"].items():
                if "_vs_" in dtype:
                    continue
                for comp, r in comps.items():
                    lines.append(
                        f"| {dtype} {comp} | {_fmt(r.get('max_abs'))} | {_fmt(r.get('scale'))} | {_fmt(r.get('rel'))} |"
                    )
    for name in ("bench_eager", "bench_compiled"):
        report = parts.get(name, {}).get("report")
        if report and report.get("markdown"):
            lines += ["", f"### {name}", "", report["markdown"].strip()]
    for name in ("gpu_tests", "gpu_tests_compiled"):
        if tail := parts.get(name, {}).get("output_tail"):
            last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:]
            lines += ["", f"{name}: {last[0] if last else '–'}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json / .md / .log")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for all parts together (default 470)")
    p.add_argument("--dry-run", action="store_true", help="the same parts on the CPU at the tiny size (fast)")
    p.add_argument("--parts", nargs="+", default=None, help="run only these parts (names as listed above)")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default: a temp folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="animatezero_gpu_check_") as work:  # the parts' reports and wheels
        return check(args, Path(work), start)


def check(args: argparse.Namespace, work: Path, start: float) -> int:
    """Every part in turn inside the time budget; writes gpu_check.json / .md / .log into ``args.out``."""
    if args.cache_dir is None:
        args.cache_dir = Path(os.environ.get("ANIMATEZERO_GPU_CHECK_CACHE", "/tmp/animatezero_gpu_check_ckpt"))
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    if not args.dry_run:
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    parts = plan(args, work)
    if args.parts:
        known = {p.name for p in parts} | {"wheels"}
        if unknown := set(args.parts) - known:
            raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {sorted(known)}")
        parts = [p for p in parts if p.name in args.parts]
    with open(args.out / "gpu_check.log", "w") as log:
        wheels_start = time.perf_counter()
        try:
            wheels = install_wheels(env, work / "site")
            wheels["status"] = "passed" if not wheels["missing"] else "incomplete"
        except (subprocess.SubprocessError, OSError) as e:
            wheels = {"status": "failed", "error": repr(e), "missing": list(OPTIONAL)}
        wheels["seconds"] = round(time.perf_counter() - wheels_start, 1)
        log.write(f"===== wheels\n{json.dumps(wheels, indent=1)}\n")
        results = {"wheels": wheels}
        results.update(run_parts(parts, args.budget - (time.perf_counter() - start), env, log, wheels["missing"], ROOT))
    summary = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "seconds": round(time.perf_counter() - start, 1),
        "environment": environment_of(results),
        "parts": results,
    }
    summary["markdown"] = markdown(summary)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(summary["markdown"])
    print(summary["markdown"])
    bad = [n for n, r in results.items() if r["status"] in ("failed", "timed_out")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
