"""scripts/benchmark.py on CPU at tiny size (run as a user runs it, with the diffusers comparison and the memory
options), and scripts/parity_full.py at full size on a GPU (skipped without CUDA).

The benchmark's numbers on a shared CPU say nothing about speed; the test checks that every run and ratio is
reported, that the Markdown table is rendered, that the FLOP count is the one measured independently, and that our
text-to-video and diffusers' compute the same frames (so the ratios compare equal work).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = (
    "ours_text_to_video",
    "ours_text_to_image",
    "ours_animatezero",
    "ours_animatezero_lockstep",
    "ours_animate",
    "ours_animate_kv_current",
    "diffusers_text_to_video",
)


def run_script(name: str, *argv: str) -> str:
    """``python scripts/<name>.py argv`` from the repository root; its stdout (the command must succeed)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_benchmark_cpu_tiny(tmp_path):
    """On a CPU with no size given: the tiny synthetic model, fp32, 64x64, 4 frames, 2 steps (the CPU defaults)."""
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--repeats", "1", "--warmup", "0", "--threads", "1", "--memory-options"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "bench.md")]
    printed = run_script("benchmark", *argv)
    report = json.loads(out.read_text())
    meta = report["meta"]
    assert (meta["size"], meta["dtype"], meta["height"], meta["width"], meta["frames"], meta["steps"]) == (
        "tiny", "fp32", 64, 64, 4, 2
    )  # fmt: skip

    assert set(report["runs"]) == set(RUNS)
    for name, r in report["runs"].items():
        assert r["median_s"] > 0 and len(r["times_s"]) == 1, name
        assert r["steps_per_s"] == pytest.approx(r["unet_steps"] / r["median_s"])
        assert r["tflop"] > 0 and r["tflops_per_s"] > 0
        assert r["x_diffusers"] > 0
        assert r["peak_mem_gib"] is None  # no per-run peak on CPU
    assert report["runs"]["ours_animatezero"]["unet_steps"] == 4
    assert report["runs"]["ours_animatezero_lockstep"]["unet_steps"] == 4
    ratios = report["ratios"]
    for key in ("controls_overhead", "controls_overhead_kv_current", "animatezero_vs_diffusers_t2v"):
        assert ratios[key] > 0, key
    assert report["runs"]["diffusers_text_to_video"]["x_diffusers"] == 1.0
    assert report["meta"]["process_rss_peak_gib"] > 0

    # FLOPs: a tiny guided video step at 64x64x4 counted independently, at the real shape on real weights (SDPA on
    # its math backend: FlopCounterMode does not count the fused CPU attention kernel)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from animatezero.pipeline import AnimateZeroPipeline

    pipe = AnimateZeroPipeline.from_single_files(*report["meta"]["checkpoints"])
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        pipe.unet(torch.zeros(2, 4, 4, 8, 8), 500, torch.zeros(2, 77, 64), motion=pipe.motion_module)
    assert report["flops"]["video_step_tflop"] * 1e12 == pytest.approx(counter.get_total_flops())
    t2v = report["runs"]["ours_text_to_video"]["tflop"]
    assert t2v == pytest.approx(2 * report["flops"]["video_step_tflop"] + report["flops"]["video_decode_tflop"])

    # same computation as diffusers (with the §4.4 norm patch), same initial latents
    assert report["parity"]["max_abs"] < 1e-3

    assert report["targets"]["applicable"] is False
    assert all(c["met"] is None for c in report["targets"]["checks"].values())
    options = [r["option"] for r in report["memory_options"]]
    assert options[0].startswith("default") and "vae_chunk_size=1" in options and "offload=True" in options
    assert all(r["text_to_video_median_s"] > 0 and r["animatezero_median_s"] > 0 for r in report["memory_options"])

    table = report["markdown"]
    assert (tmp_path / "bench.md").read_text() == table
    assert "| run | median s | steps/s | peak GiB | TFLOP | TFLOP/s | x diffusers |" in table
    assert all(f"| {name} |" in table for name in RUNS)
    assert "| memory option |" in table and "| offload=True |" in table
    assert table in printed


@pytest.mark.slow  # Dynamo tracing of the UNet; .ci/run runs it (pytest -m slow)
def test_benchmark_compile_reports_cold_and_cached_first_runs(tmp_path):
    """The --compile path: first run on an empty cache and first run of a new compiled pipeline after a Dynamo reset,
    reported apart from the timed runs, with their ratio to the eager runs. Dynamo's tracing only (backend "eager"):
    Inductor's C++ build of a whole UNet takes minutes on this CPU; the cache reuse itself is tested in
    test_compile.py."""
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-diffusers"]
    argv += ["--compile", "default", "--compile-backend", "eager", "--frames", "2", "--steps", "1"]
    printed = run_script("benchmark", *argv, "--cache-dir", str(tmp_path / "cache"), "--json", str(out))
    report = json.loads(out.read_text())
    runs, compiled = report["runs"], report["compile"]
    assert set(compiled) == {"compiled_text_to_video", "compiled_animatezero"}
    for r in compiled.values():
        assert r["warmup_cold_s"] > 0 and r["warmup_cached_s"] > 0 and len(r["times_s"]) == 1
    assert report["compile_cache"] == {"cold_misses": 0, "cached_hits": 0, "cached_misses": 0}  # no Inductor
    t2v, az = compiled["compiled_text_to_video"], compiled["compiled_animatezero"]
    assert t2v["x_eager"] == pytest.approx(t2v["median_s"] / runs["ours_text_to_video"]["median_s"])
    assert az["x_eager"] == pytest.approx(az["median_s"] / runs["ours_animatezero"]["median_s"])
    assert t2v["tflop"] == pytest.approx(runs["ours_text_to_video"]["tflop"])
    assert az["unet_steps"] == 2 * t2v["unet_steps"] == 2
    assert "| compiled run (default) | first run s, empty cache | first run s, cached |" in printed
    assert "| compiled_animatezero |" in printed and "0 graphs compiled cold" in printed


@pytest.mark.gpu
@pytest.mark.slow
def test_parity_full_size_cuda(tmp_path):
    """Full SD1.5 + motion v2 shapes, 512x512x16, 25 steps: every fp32 component within 1e-4 of diffusers."""
    pytest.importorskip("diffusers")
    out = tmp_path / "parity.json"
    run_script("parity_full", "--device", "cuda", "--dtypes", "fp32", "fp16", "--json", str(out))
    report = json.loads(out.read_text())
    fp32 = report["results"]["fp32"]
    assert set(fp32) == {
        "clip",
        "unet_image",
        "unet_video",
        "vae_decode",
        "text_to_video_latents",
        "text_to_video_frames",
    }
    for name, row in fp32.items():
        assert row["finite"], name
        assert row["rel"] <= 1e-4, (name, row)
    assert report["ok"] is True
