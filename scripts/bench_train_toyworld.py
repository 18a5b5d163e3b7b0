"""Benchmark the toy-world trainer on this machine: seconds per step of every stage, and the recipe's projected time.

Runs ``scripts/train_toyworld.py`` itself for a few steps of every stage (into a temporary folder, nothing shipped is
touched), once with each ``--split`` asked for, reads each stage's measured minutes from its done marker, and
projects the recipe's default step counts. The first step of each stage (allocation, warm-up) is included, so short
runs overstate the time a little.

    python scripts/bench_train_toyworld.py                 # --split 1 (intra-op threads only) and 0 (the default)
    python scripts/bench_train_toyworld.py --steps 200 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_toyworld as trainer  # noqa: E402


def measure(steps: int, pool_clips: int, threads: int, split: int) -> tuple[dict[str, float], float]:
    """Seconds per step of each stage (``latents``: per clip encoded), and the wall time of the whole run."""
    per_stage = {s: steps for s in trainer.STAGES} | {"text": max(1, steps // 5)}
    argv = [f"--threads={threads}", f"--split={split}", f"--pool-clips={pool_clips}", "--save-every=100000"]
    argv += [f"--steps-{s}={n}" for s, n in per_stage.items()]
    with tempfile.TemporaryDirectory() as tmp:
        argv += ["--out", f"{tmp}/state", "--dest", f"{tmp}/dest"]
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # bars, manifest
            trainer.main(argv)
        wall = time.perf_counter() - t0
        manifest = json.loads((Path(tmp) / "dest" / "manifest.json").read_text())
    seconds = {s: manifest["stages"][s]["minutes"] * 60 / per_stage[s] for s in trainer.STAGES}
    seconds["latents"] = manifest.get("latent_pool", {}).get("minutes", float("nan")) * 60 / pool_clips
    return seconds, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="steps per stage (the text stage runs a fifth of them)")
    ap.add_argument("--pool-clips", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--split", type=int, nargs="+", default=[1, 0], help="--split values to compare")
    args = ap.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {args.steps} steps per stage")
    for split in args.split:
        seconds, wall = measure(args.steps, args.pool_clips, threads, split)
        name = f"split {split or threads}"
        print(f"\n{name} (this benchmark's run: {wall:.0f} s)")
        print(f"  {'stage':<8} {'ms/step':>8} {'default steps':>14} {'projected min':>14}")
        total = 0.0
        for stage, sec in seconds.items():
            n = trainer.POOL_CLIPS if stage == "latents" else trainer.DEFAULT_STEPS[stage]
            total += sec * n / 60
            print(f"  {stage:<8} {sec * 1000:>8.0f} {n:>14,} {sec * n / 60:>14.1f}")
        print(f"  {'recipe':<8} {'':>8} {'':>14} {total:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
