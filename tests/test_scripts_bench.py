"""scripts/benchmark.py on CPU at tiny size (in-process, with the diffusers comparison and the memory options), and
scripts/parity_full.py at full size on a GPU (skipped without CUDA).

The benchmark's numbers on a shared CPU say nothing about speed; the test checks that every run and ratio is
reported, that the Markdown table is rendered, that the FLOP count is the one measured independently, and that our
text-to-video and diffusers' compute the same frames (so the ratios compare equal work).
"""

from __future__ import annotations

import importlib.util
import json
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


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Tiny models are per-op overhead; a second intra-op thread on a busy 2-core machine only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_cpu_tiny(tmp_path, capsys, one_thread):
    pytest.importorskip("diffusers")
    bench = load_script("benchmark")
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--size", "tiny", "--dtype", "fp32", "--repeats", "1", "--warmup", "0"]
    argv += ["--steps", "2", "--frames", "4", "--height", "64", "--width", "64", "--memory-options"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "bench.md")]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

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


def test_benchmark_defaults_follow_device():
    bench = load_script("benchmark")
    cpu = bench.parse_args(["--device", "cpu"])
    assert (cpu.size, cpu.dtype, cpu.height, cpu.width, cpu.frames, cpu.steps) == ("tiny", "fp32", 64, 64, 4, 2)
    full = bench.parse_args(["--device", "cpu", "--size", "full", "--dtype", "fp16"])
    assert (full.height, full.width, full.frames, full.steps) == (512, 512, 16, 25)


@pytest.mark.slow  # Dynamo tracing of the UNet; .ci/run runs it (pytest -m slow)
def test_benchmark_compile_reports_cold_and_cached_first_runs(micro_parts, one_thread):
    """The --compile path: first run on an empty cache and first run of a new compiled pipeline after a Dynamo reset,
    reported apart from the timed runs. Dynamo's tracing only (backend "eager"): Inductor's C++ build of a whole UNet
    takes minutes on this CPU; the cache reuse itself is tested in test_compile.py."""
    import argparse

    from animatezero.pipeline import AnimateZeroPipeline

    bench = load_script("benchmark")
    shape = dict(height=64, width=64, frames=4, steps=2, guidance=7.5)
    args = argparse.Namespace(**shape, repeats=1, warmup=0, compile={"backend": "eager", "fullgraph": True})
    gen = torch.Generator().manual_seed(0)
    video, image = torch.randn(1, 4, 4, 8, 8, generator=gen), torch.randn(1, 4, 8, 8, generator=gen)
    runs, cache = bench.compile_runs(
        AnimateZeroPipeline(*micro_parts), args, video, image, torch.device("cpu"), torch.float32
    )
    assert set(runs) == {"compiled_text_to_video", "compiled_animatezero"}
    for r in runs.values():
        assert r["warmup_cold_s"] > 0 and r["warmup_cached_s"] > 0 and len(r["times_s"]) == 1
    assert cache == {"cold_misses": 0, "cached_hits": 0, "cached_misses": 0}  # no Inductor with this backend

    eager = {"ours_text_to_video": {"median_s": 2.0}, "ours_animatezero": {"median_s": 4.0}}
    counts = dict(video_step=3.0, image_step=1.0, video_decode=2.0, image_decode=1.0)
    summary = bench.summarize_compiled(runs, eager, counts, steps=2)
    t2v = summary["compiled_text_to_video"]
    assert t2v["x_eager"] == pytest.approx(t2v["median_s"] / 2.0) and t2v["tflop"] == pytest.approx(8e-12)
    assert summary["compiled_animatezero"]["unet_steps"] == 4
    table = "\n".join(bench.compile_table(summary, cache, "default"))
    assert "| compiled run (default) | first run s, empty cache | first run s, cached |" in table
    assert "| compiled_animatezero |" in table and "0 graphs compiled cold" in table


@pytest.mark.gpu
@pytest.mark.slow
def test_parity_full_size_cuda(tmp_path):
    """Full SD1.5 + motion v2 shapes, 512x512x16, 25 steps: every fp32 component within 1e-4 of diffusers."""
    pytest.importorskip("diffusers")
    parity = load_script("parity_full")
    out = tmp_path / "parity.json"
    status = parity.main(["--device", "cuda", "--dtypes", "fp32", "fp16", "--json", str(out)])
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
    assert status == 0 and report["ok"] is True
