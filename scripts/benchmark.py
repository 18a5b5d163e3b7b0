"""Benchmark our text-to-video, our full AnimateZero (text-to-image + animate) and diffusers' AnimateDiffPipeline.

    python scripts/benchmark.py [--device cuda|cpu] [--size tiny|full] [--dtype fp16|bf16|fp32] [--frames 16]
        [--height 512 --width 512] [--steps 25] [--guidance 7.5] [--repeats 3] [--warmup 1] [--compile [MODE]]
        [--memory-options] [--no-diffusers] [--json out.json] [--markdown out.md] [--cache-dir DIR]

Every pipeline is built from the same synthetic single files (random weights with the real SD1.5 / motion v2 keys and
shapes, ``models.synthetic``; written once into ``--cache-dir``), runs in this process with the same settings and the
same initial latents, and is timed end to end (prompt encoding, sampling, VAE decode, frames on the host). Each
configuration gets ``--warmup`` untimed runs, then ``--repeats`` timed runs; the median is reported.

Runs (``unet_steps`` counts guided UNet evaluations, for steps/s):
  ours_text_to_video        AnimateZeroPipeline.text_to_video (plain AnimateDiff)                       steps
  ours_text_to_image        text_to_image(record_kv=True) (step 1, as the default kv_source 'cached' needs) steps
  ours_animatezero          text_to_image(record_kv=True) + animate(Controls.paper()): the full method  2 x steps
  ours_animate              animate(image, Controls.paper()) alone (image made beforehand)             steps
  ours_animate_kv_current   animate with kv_source='current' (no recorded keys/values)                 steps
  diffusers_text_to_video   diffusers AnimateDiffPipeline (stock, eager, SDPA, §4.2 DDIM), output_type="pt"
Ratios: ``x_diffusers`` = our median / diffusers' median; controls overhead = animate / text_to_video.
After timing, diffusers runs once more with the §4.4 per-frame GroupNorm patch, and its frames are compared with ours
(``parity``): the two text-to-video runs compute the same video.

Peak memory: ``torch.cuda.max_memory_allocated`` reset before each run (weights of the running pipeline included;
the other pipeline's weights are parked in host memory meanwhile). On CPU no per-run peak is measured; the process's
peak RSS (``resource.getrusage``) is reported once in ``meta``.

Achieved TFLOP/s: FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no
memory, any size; on a CPU the fused SDPA kernel would go uncounted) at the benchmark's shape, for one guided UNet
step of the video and of the image and for the VAE decode of the clip and of the image; runs add those up (the
controls' runs are counted as their plain equivalent, "nominal"). At 512x512x16 this gives 35.5 TFLOP per guided
video step and 927.7 TFLOP for 25 steps + decode, the issue's anchor.
The text encoder (< 0.01%) is not counted.

``--compile [MODE]`` also runs text_to_video and AnimateZero compiled (``compile=MODE``, default "default";
"reduce-overhead" adds CUDA graphs) and reports apart the first run with an empty Inductor cache (the whole
compilation) and the first run of a new compiled pipeline on that cache after ``torch._dynamo.reset()`` (what a later
process pays), with the cache's hit/miss counts. ``--memory-options`` re-runs both under options that bound memory
(VAE decode in chunks of 16 / 1, model offload) and reports peak memory and time for each.
Default size: full on CUDA (512x512, 16 frames, 25 steps, fp16), tiny on CPU (64x64, 4 frames, 2 steps, fp32).

``--few-step`` adds the few-step comparison (docs/fewstep.md §4), ``--few-step-only`` runs only it; its cases run
interleaved (round r of every case before round r + 1), so a machine whose load drifts affects all alike:
  step_ddim_guided          one video denoising step: the UNet with guidance ``--guidance`` (2 branches) + DDIM update
  step_lcm / step_euler     the same step unguided (guidance 1, 1 branch) + the LCM / Euler update
  animatezero_ddim_{N}      AnimateZero lockstep (generate, Controls.paper()), ``--steps`` DDIM steps, guided
  animatezero_{lcm,euler}_{n}  the same with ``--few-steps`` (default 4) steps of LCM / Euler, guidance 1
  animatezero_lcm_{n}_g2    LCM at AnimateLCM's guidance 2 (two branches)
Ratios: ``step_speedup_*`` = guided DDIM step / unguided few-step step; ``animatezero_speedup_*`` = DDIM run / few-step
run. The target (one H100/H200, fp16, 512x512, image + 16 frames, 4 LCM steps): AnimateZero <= 0.5 s.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from animatezero.controls import Controls  # noqa: E402
from animatezero.pipeline import AnimateZeroPipeline  # noqa: E402

AnimateZeroPipeline.progress = False  # timed runs: no progress bars (they cost time and clutter the figures)
from models.compile import MODES  # noqa: E402
from tests import oracle  # noqa: E402

PROMPT = "a corgi running on the beach at golden hour, highly detailed"
GIB = 1024**3
DEFAULTS = {  # size -> (height, width, frames, steps)
    "full": (512, 512, 16, 25),
    "tiny": (64, 64, 4, 2),
}
TARGET_SHAPE = dict(height=512, width=512, frames=16, steps=25, guidance=7.5, dtype="fp16", size="full")
TARGETS = {  # name -> (limit, comparison); from the performance issue (one H100)
    "animatezero_vs_diffusers_t2v": (0.6, "<="),
    "animatezero_median_s": (2.0, "<"),
    "controls_overhead": (1.10, "<="),
    "peak_mem_gib": (10.0, "<="),
}
MEMORY_OPTIONS = (
    ("vae_chunk_size=16", {"vae_chunk_size": 16}),
    ("vae_chunk_size=1", {"vae_chunk_size": 1}),
    ("offload=True", {"offload": True}),
    ("offload=True, vae_chunk_size=1", {"offload": True, "vae_chunk_size": 1}),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--size", choices=("tiny", "full"), default=None, help="default: full on CUDA, tiny on CPU")
    p.add_argument("--dtype", choices=tuple(oracle.DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial latents")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=MODES,
        metavar="MODE",
        help="also run compiled (mode: default, reduce-overhead = + CUDA graphs, max-autotune...); cold and cached "
        "warm-ups reported apart",
    )
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="with --compile: only the compiled runs (no eager runs, no diffusers; x_eager is then not reported)",
    )
    p.add_argument(
        "--compile-runs",
        choices=("both", "text_to_video", "animatezero"),
        default="both",
        help="which runs --compile measures (one run compiles fewer graphs: a shorter warm-up)",
    )
    p.add_argument(
        "--compile-backend",
        default=None,
        help="with --compile: a torch.compile backend instead of Inductor's mode (e.g. 'eager': traces only; for a "
        "quick dry run of this script)",
    )
    p.add_argument("--memory-options", action="store_true", help="also run vae_chunk_size 16 / 1 and offload")
    p.add_argument("--few-step", action="store_true", help="also compare DDIM with LCM / Euler (interleaved)")
    p.add_argument("--few-step-only", action="store_true", help="only the few-step comparison")
    p.add_argument("--few-steps", type=int, default=4, help="steps of the few-step samplers (default 4)")
    p.add_argument(
        "--few-step-cases",
        nargs="+",
        default=None,
        help="with --few-step: only these cases (e.g. step_ddim_guided step_lcm animatezero_lcm_4); default: all",
    )
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers' AnimateDiffPipeline")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default: ~/.cache/...)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the Markdown tables here")
    args = p.parse_args(argv)
    for name in ("frames", "height", "width", "steps"):  # 0 would silently mean "the default"
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but no CUDA device is available")
    args.size = args.size or ("full" if args.device == "cuda" else "tiny")
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    height, width, frames, steps = DEFAULTS[args.size]
    args.height, args.width = args.height or height, args.width or width
    args.frames, args.steps = args.frames or frames, args.steps or steps
    if args.compile_only and not args.compile:
        p.error("--compile-only needs --compile [MODE]")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.few_steps < 1:
        p.error(f"--few-steps must be >= 1, got {args.few_steps}")
    args.few_step = args.few_step or args.few_step_only
    unknown = sorted(set(args.few_step_cases or ()) - set(few_step_case_names(args.steps, args.few_steps)))
    if unknown:  # refused before anything is loaded
        p.error(f"--few-step-cases: unknown {unknown}; the cases are {few_step_case_names(args.steps, args.few_steps)}")
    return args


# ------------------------------------------------------------------------------------------------------ measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed (their times are reported apart), then ``repeats`` times timed. Returns
    times, their median, peak and resident memory (CUDA), and the last result under ``"result"``."""
    warmup_s, times, peaks, resident = [], [], [], []
    result = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(warmup + repeats):
            result = None  # the previous run's output must not count in this run's peak memory
            result, elapsed = _one_run(fn, device, resident)
            if i < warmup:
                warmup_s.append(elapsed)
                continue
            times.append(elapsed)
            if device.type == "cuda":
                peaks.append(torch.cuda.max_memory_allocated(device) / GIB)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "warmup_s": warmup_s,
        "peak_mem_gib": max(peaks) if peaks else None,
        "resident_gib": min(resident) if resident else None,
        # e.g. "the VAE decode overflowed in reduced precision; decoding again in float32" (changes the timing)
        "warnings": sorted({str(w.message).split("\n")[0] for w in caught}),
        "result": result,
    }


def _one_run(fn: Callable[[], Any], device: torch.device, resident: list[float]) -> tuple[Any, float]:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        resident.append(torch.cuda.memory_allocated(device) / GIB)
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rss_peak_gib() -> float | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


# -------------------------------------------------------------------------------------------------------- FLOPs
def _counting_processor(attn, x, context):
    """The default attention computation, with the positional table sliced by shape instead of indexed by values
    (the default's range check reads a value, which the meta device cannot). Same matmuls, so the same FLOPs."""
    from models.attention import attention

    if attn.pos_encoder is not None:
        x = x + attn.pos_encoder.pe[:, : x.shape[-2]].to(x.dtype)  # [N, f, c]
    ctx = x if context is None else context
    return attn.to_out(attention(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), attn.heads))


def count_flops(pipe: AnimateZeroPipeline, frames: int, height: int, width: int, guided: bool) -> dict[str, float]:
    """FLOPs (FlopCounterMode, meta device, the pipeline's architectures) of one guided UNet step on the video
    ``[b, 4, f, h/8, w/8]`` and on the image, and of the VAE decode of ``f`` frames and of one image."""
    from models.attention import Attention
    from models.motion_module import MotionModules
    from models.unet import UNetModel
    from models.vae import AutoencoderKL

    with torch.device("meta"):
        unet = UNetModel(pipe.unet.config).eval()
        motion = MotionModules(pipe.motion_module.config).eval()
        vae = AutoencoderKL(pipe.vae.cfg).eval()
    for m in motion.modules():
        if isinstance(m, Attention):
            m.processor = _counting_processor
    b, h, w = (2 if guided else 1), height // 8, width // 8
    ctx = torch.zeros(b, 77, pipe.unet.config.context_dim, device="meta")

    def flops(fn: Callable[[], Any]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    return {
        "video_step": flops(lambda: unet(torch.zeros(b, 4, frames, h, w, device="meta"), 500, ctx, motion=motion)),
        "image_step": flops(lambda: unet(torch.zeros(b, 4, h, w, device="meta"), 500, ctx)),
        "video_decode": flops(lambda: vae.decode(torch.zeros(frames, 4, h, w, device="meta"))),
        "image_decode": flops(lambda: vae.decode(torch.zeros(1, 4, h, w, device="meta"))),
    }


KINDS = {
    "ours_text_to_image": "t2i",
    "ours_animatezero": "animatezero",
    "ours_animatezero_lockstep": "animatezero",
    "compiled_animatezero": "animatezero",
}


def run_flops(name: str, counts: dict[str, float], steps: int) -> tuple[int, float]:
    """(guided UNet steps, nominal FLOPs) of a run: UNet steps + VAE decode; the controls' runs count as their plain
    equivalent, any other run as text-to-video."""
    t2v = steps * counts["video_step"] + counts["video_decode"]
    t2i = steps * counts["image_step"] + counts["image_decode"]
    kind = KINDS.get(name, "t2v")
    return (2 * steps if kind == "animatezero" else steps), {"t2v": t2v, "t2i": t2i, "animatezero": t2i + t2v}[kind]


# ---------------------------------------------------------------------------------------------------------- runs
def our_runs(pipe: AnimateZeroPipeline, args, video_latents, image_latents, device) -> dict[str, dict]:
    common = dict(height=args.height, width=args.width, steps=args.steps, guidance_scale=args.guidance)

    def t2i(record_kv: bool = True):
        return pipe.text_to_image(PROMPT, latents=image_latents, record_kv=record_kv, **common)

    def animate(image, controls: Controls):
        return pipe.animate(image, num_frames=args.frames, latents=video_latents, controls=controls)

    runs = {}
    runs["ours_text_to_video"] = measure(
        lambda: pipe.text_to_video(PROMPT, num_frames=args.frames, latents=video_latents, **common),
        device,
        args.repeats,
        args.warmup,
    )
    runs["ours_text_to_image"] = measure(t2i, device, args.repeats, args.warmup)
    runs["ours_text_to_image"]["result"] = None  # its key/value bank would stay in device memory
    runs["ours_animatezero"] = measure(lambda: animate(t2i(), Controls.paper()), device, args.repeats, args.warmup)
    runs["ours_animatezero_lockstep"] = measure(  # steps 1 and 2 interleaved: one step's keys/values held
        lambda: pipe.generate(
            PROMPT, num_frames=args.frames, image_latents=image_latents, video_latents=video_latents, **common
        ),
        device,
        args.repeats,
        args.warmup,
    )
    image = t2i()
    runs["ours_animate"] = measure(lambda: animate(image, Controls.paper()), device, args.repeats, args.warmup)
    image = None  # frees the key/value bank
    free_memory(device)
    plain = t2i(record_kv=False)
    current = replace(Controls.paper(), kv_source="current")
    runs["ours_animate_kv_current"] = measure(lambda: animate(plain, current), device, args.repeats, args.warmup)
    for name, r in runs.items():
        if name != "ours_text_to_video":
            r["result"] = None
    return runs


def park(pipe: AnimateZeroPipeline, device: torch.device | str) -> None:
    """Move our networks (to host memory while diffusers runs, so its peak memory does not include ours)."""
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.motion_module):
        m.to(device)


def diffusers_runs(files, args, video_latents, device, dtype, our_frames) -> tuple[dict, dict]:
    """Time stock diffusers, then run once with the §4.4 GroupNorm patch and compare its frames with ours."""
    with tempfile.TemporaryDirectory(prefix="animatezero_bench_cfg_") as tmp:
        config_dir = oracle.write_config_dir(files, tmp)
        pipe = oracle.build_animatediff(files, config_dir, device=device, dtype=dtype)
    latents = video_latents.to(device, dtype)

    def call():
        out = pipe(
            prompt=PROMPT,
            negative_prompt="",
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            latents=latents,
            output_type="pt",
        )
        return out.frames[0].cpu()  # [f, 3, H, W] in [0, 1]

    runs = {"diffusers_text_to_video": measure(call, device, args.repeats, args.warmup)}
    runs["diffusers_text_to_video"]["result"] = None
    patched = oracle.patch_motion_norms(pipe.unet)
    with torch.inference_mode():
        frames = call()
    parity = {
        "what": "max |ours - diffusers| over the text-to-video frames in [0, 1], diffusers with the §4.4 "
        f"per-frame GroupNorm patch ({patched} motion modules), same initial latents",
        **oracle.max_err(our_frames, frames),
        "ours_finite": bool(torch.isfinite(our_frames).all()),
        "diffusers_finite": bool(torch.isfinite(frames).all()),
    }
    pipe = None
    free_memory(device)
    return runs, parity


def t2v_and_animatezero(
    pipe, args, video_latents, image_latents, device, warmup: int, which: str = "both"
) -> tuple[dict | None, dict | None]:
    """Measure ``pipe``'s text_to_video and full AnimateZero (text_to_image(record_kv) + animate); ``which`` says
    which of the two ("both", "text_to_video", "animatezero"; the other is None)."""
    common = dict(height=args.height, width=args.width, steps=args.steps, guidance_scale=args.guidance)

    def t2v():
        return pipe.text_to_video(PROMPT, num_frames=args.frames, latents=video_latents, **common)

    def animatezero():
        image = pipe.text_to_image(PROMPT, latents=image_latents, record_kv=True, **common)
        return pipe.animate(image, num_frames=args.frames, latents=video_latents)

    out = (
        measure(t2v, device, args.repeats, warmup) if which in ("both", "text_to_video") else None,
        measure(animatezero, device, args.repeats, warmup) if which in ("both", "animatezero") else None,
    )
    for r in out:
        if r is not None:
            r["result"] = None
    return out


def compile_runs(pipe, args, video_latents, image_latents, device, dtype) -> tuple[dict[str, dict], dict[str, int]]:
    """``compile=args.compile`` on the same networks, with an empty Inductor cache: the first warm-up run pays the
    whole compilation ("cold"). Then Dynamo is reset and a new compiled pipeline on the same cache runs once more:
    its first run ("cached") is what a later process pays (tracing again, Inductor's code from the cache).
    Returns the runs and the FX-graph cache's miss/hit counts of both passes."""
    from torch._dynamo.utils import counters

    modules = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.motion_module)

    which = getattr(args, "compile_runs", "both")

    def one_pass(cache: str, warmup: int) -> tuple[tuple[dict | None, dict | None], dict]:
        torch._dynamo.reset()
        counters.clear()
        backend = getattr(args, "compile_backend", None)
        setting = {"backend": backend} if backend else args.compile
        cpipe = AnimateZeroPipeline(*modules, device=device, dtype=dtype, compile=setting, compile_cache_dir=cache)
        runs = t2v_and_animatezero(cpipe, args, video_latents, image_latents, device, warmup, which)
        return runs, dict(counters["inductor"])

    with tempfile.TemporaryDirectory(prefix="animatezero_bench_compile_") as cache:
        (t2v, az), cold = one_pass(cache, max(args.warmup, 1))
        again, cached = one_pass(cache, 0)
        torch._dynamo.reset()
    for r, second in zip((t2v, az), again):
        if r is not None:
            r["warmup_cold_s"], r["warmup_cached_s"] = r["warmup_s"][0], second["times_s"][0]
    inductor_cache = {
        "cold_misses": cold.get("fxgraph_cache_miss", 0),
        "cached_hits": cached.get("fxgraph_cache_hit", 0),
        "cached_misses": cached.get("fxgraph_cache_miss", 0),
    }
    runs = {"compiled_text_to_video": t2v, "compiled_animatezero": az}
    return {name: r for name, r in runs.items() if r is not None}, inductor_cache


def memory_option_runs(pipe, args, video_latents, image_latents, device, dtype) -> list[dict]:
    """text_to_video and AnimateZero under each of ``MEMORY_OPTIONS`` (same networks, new pipeline objects)."""
    rows = []
    modules = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.motion_module)
    for label, options in MEMORY_OPTIONS:
        mpipe = AnimateZeroPipeline(*modules, device=device, dtype=dtype, **options)
        t2v, az = t2v_and_animatezero(mpipe, args, video_latents, image_latents, device, args.warmup)
        row = {"option": label}
        row.update({f"text_to_video_{k}": t2v[k] for k in ("median_s", "peak_mem_gib")})
        row.update({f"animatezero_{k}": az[k] for k in ("median_s", "peak_mem_gib")})
        rows.append(row)
        free_memory(device)
    park(pipe, device)  # offload left the networks in host memory
    return rows


# -------------------------------------------------------------------------------------------------------- report
def summarize(name: str, run: dict, counts: dict[str, float], steps: int) -> dict[str, Any]:
    unet_steps, flops = run_flops(name, counts, steps)
    out = {k: run[k] for k in ("median_s", "times_s", "warmup_s", "peak_mem_gib", "resident_gib", "warnings")}
    out.update(
        unet_steps=unet_steps,
        steps_per_s=unet_steps / run["median_s"],
        tflop=flops / 1e12,
        tflops_per_s=flops / 1e12 / run["median_s"],
    )
    return out


def summarize_compiled(compiled: dict, runs: dict, counts: dict[str, float], steps: int) -> dict[str, dict]:
    """The compiled runs' summaries, with their first runs (empty cache, cached) and their ratio to the eager run."""
    out = {}
    for name, r in compiled.items():
        eager = runs.get("ours_text_to_video" if name.endswith("text_to_video") else "ours_animatezero")
        out[name] = {
            **summarize(name, r, counts, steps),
            "warmup_cold_s": r["warmup_cold_s"],
            "warmup_cached_s": r["warmup_cached_s"],
            "x_eager": r["median_s"] / eager["median_s"] if eager is not None else None,  # None: --compile-only
        }
    return out


def check_targets(args, runs: dict, ratios: dict) -> dict[str, Any]:
    applicable = args.device == "cuda" and all(getattr(args, k) == v for k, v in TARGET_SHAPE.items())
    ours = [r["peak_mem_gib"] for n, r in runs.items() if n.startswith("ours_") and r["peak_mem_gib"] is not None]
    values = {
        "animatezero_vs_diffusers_t2v": ratios.get("animatezero_vs_diffusers_t2v"),
        "animatezero_median_s": runs["ours_animatezero"]["median_s"],
        "controls_overhead": ratios["controls_overhead"],
        "peak_mem_gib": max(ours) if ours else None,
    }
    checks = {}
    for name, (limit, op) in TARGETS.items():
        value = values[name]
        met = None if value is None else (value <= limit if op == "<=" else value < limit)
        checks[name] = {"value": value, "limit": f"{op} {limit}", "met": met if applicable else None}
    return {"applicable": applicable, "setting": TARGET_SHAPE, "checks": checks}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def compile_table(compiled: dict, cache: dict, mode: Any) -> list[str]:
    lines = [
        "",
        f"| compiled run ({mode}) | first run s, empty cache | first run s, cached | median s | peak GiB | x eager |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in compiled.items():
        lines.append(
            f"| {name} | {_fmt(r['warmup_cold_s'])} | {_fmt(r['warmup_cached_s'])} | {_fmt(r['median_s'])} | "
            f"{_fmt(r['peak_mem_gib'])} | {_fmt(r['x_eager'])} |"
        )
    return lines + [
        "",
        f"Inductor FX-graph cache: {cache['cold_misses']} graphs compiled cold; {cache['cached_hits']} hits and "
        f"{cache['cached_misses']} misses on the cached run.",
    ]


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [
        f"### AnimateZero benchmark: {m['device_name']}, {m['dtype']}, {m['height']}x{m['width']}x{m['frames']}, "
        f"{m['steps']} steps, guidance {m['guidance']} ({m['size']} synthetic weights)",
        "",
        f"torch {m['torch']}, diffusers {m['diffusers'] or '–'}, {m['date']}; median of {m['repeats']} runs after "
        f"{m['warmup']} warm-up; TFLOP counted {m['flop_count']}",
        "",
    ]
    if report["runs"]:
        lines += [
            "| run | median s | steps/s | peak GiB | TFLOP | TFLOP/s | x diffusers |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {_fmt(r['median_s'])} | {_fmt(r['steps_per_s'])} | {_fmt(r['peak_mem_gib'])} | "
            f"{_fmt(r['tflop'])} | {_fmt(r['tflops_per_s'])} | {_fmt(r.get('x_diffusers'))} |"
        )
    if ratios := report["ratios"]:
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in ratios.items()]
    if report.get("parity"):
        p = report["parity"]
        lines += ["", f"Parity (ours vs diffusers text-to-video frames): max abs {_fmt(p['max_abs'])}."]
    if t := report["targets"]:
        lines += ["", f"Targets ({'applicable' if t['applicable'] else 'not applicable: not the target setting'}):"]
        lines += ["", "| target | value | limit | met |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {_fmt(v['value'])} | {v['limit']} | {_fmt(v['met'])} |" for k, v in t["checks"].items()]
    if report.get("compile"):
        lines += compile_table(report["compile"], report["compile_cache"], report["meta"]["compile"])
    if report.get("memory_options"):
        lines += [
            "",
            "| memory option | text_to_video s | text_to_video peak GiB | AnimateZero s | AnimateZero peak GiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in report["memory_options"]:
            lines.append(
                f"| {r['option']} | {_fmt(r['text_to_video_median_s'])} | {_fmt(r['text_to_video_peak_mem_gib'])} | "
                f"{_fmt(r['animatezero_median_s'])} | {_fmt(r['animatezero_peak_mem_gib'])} |"
            )
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or "unknown")


def environment(args, device: torch.device) -> dict[str, Any]:
    try:
        import diffusers

        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    cuda = device.type == "cuda"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "diffusers": diffusers_version,
        "python": platform.python_version(),
        **{k: getattr(args, k) for k in ("size", "dtype", "height", "width", "frames", "steps", "guidance")},
        **{k: getattr(args, k) for k in ("repeats", "warmup", "seed", "compile", "memory_options")},
        "prompt": PROMPT,
        "ours_vae_chunk_size": 8,
        "diffusers_decode_chunk_size": 16,
        "flop_count": "with FlopCounterMode on the meta device at the benchmark shape",
    }


# ------------------------------------------------------------------------------------------------------ few-step
def few_step_case_names(steps: int, n: int) -> list[str]:
    return ["step_ddim_guided", "step_lcm", "step_euler", f"animatezero_ddim_{steps}", f"animatezero_lcm_{n}",
            f"animatezero_euler_{n}", f"animatezero_lcm_{n}_g2"]  # fmt: skip


def few_step_cases(pipe: AnimateZeroPipeline, args, video_latents, image_latents) -> dict[str, Callable[[], Any]]:
    """The few-step comparison's cases (module docstring), each a zero-argument callable."""
    from models.guidance import cfg_denoiser
    from models.samplers import get_sampler

    n = args.few_steps
    cond = pipe.encode_prompt(PROMPT)
    uncond = pipe.encode_prompt("")
    x = video_latents.to(pipe.device, pipe.dtype)

    def one_step(name: str, guidance: float) -> Callable[[], Any]:
        sampler = get_sampler(name, pipe.schedule)
        timesteps = sampler.timesteps(n if name != "ddim" else args.steps)
        t, t_prev = timesteps[0], sampler.previous(0, timesteps)
        denoise = cfg_denoiser(pipe.runner, cond, uncond, guidance)
        generator = torch.Generator("cpu").manual_seed(args.seed)

        @torch.inference_mode()
        def step():
            with pipe.runner.using(pipe.unet, pipe.motion_module):
                noise = sampler.draw_noise(x, 0, len(timesteps), generator)
                return sampler.step(x, denoise(x, t), t, t_prev, noise)[0]

        return step

    def animatezero(name: str, steps: int, guidance: float) -> Callable[[], Any]:
        kw = dict(height=args.height, width=args.width, steps=steps, guidance_scale=guidance, seed=args.seed)
        return lambda: pipe.generate(
            PROMPT, num_frames=args.frames, image_latents=image_latents, video_latents=video_latents, sampler=name, **kw
        )

    cases = dict(
        zip(
            few_step_case_names(args.steps, n),
            [
                one_step("ddim", args.guidance),
                one_step("lcm", 1.0),
                one_step("euler", 1.0),
                animatezero("ddim", args.steps, args.guidance),
                animatezero("lcm", n, 1.0),
                animatezero("euler", n, 1.0),
                animatezero("lcm", n, 2.0),
            ],
            strict=True,
        )
    )
    return {k: v for k, v in cases.items() if not args.few_step_cases or k in args.few_step_cases}


def few_step_runs(pipe: AnimateZeroPipeline, args, video_latents, image_latents, device, log) -> dict[str, Any]:
    """The few-step cases, interleaved: ``--warmup`` untimed rounds, then ``--repeats`` timed rounds, each round one
    run of every case in turn; per case the median, and the speed-ups of the few-step cases over DDIM."""
    cases = few_step_cases(pipe, args, video_latents, image_latents)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.warmup + args.repeats):
        for name, fn in cases.items():
            _, elapsed = _one_run(fn, device, [])
            log(f"[benchmark] few-step round {r} {name}: {elapsed:.3f} s" + (" (warm-up)" if r < args.warmup else ""))
            if r >= args.warmup:
                times[name].append(elapsed)
    median = {name: statistics.median(t) for name, t in times.items()}
    n, ddim = args.few_steps, f"animatezero_ddim_{args.steps}"
    ratios = {}
    for few in ("lcm", "euler"):
        if "step_ddim_guided" in median and f"step_{few}" in median:
            ratios[f"step_speedup_{few}"] = median["step_ddim_guided"] / median[f"step_{few}"]
        if ddim in median and f"animatezero_{few}_{n}" in median:
            ratios[f"animatezero_speedup_{few}_{n}"] = median[ddim] / median[f"animatezero_{few}_{n}"]
    target = None
    lcm = median.get(f"animatezero_lcm_{n}")
    if device.type == "cuda" and lcm is not None and (args.height, args.width, args.frames, n) == (512, 512, 16, 4):
        target = {"limit_s": 0.5, "value_s": lcm, "met": lcm <= 0.5}
    shape = dict(height=args.height, width=args.width, frames=args.frames, steps=args.steps, few_steps=n)
    return {"shape": shape, "guidance": args.guidance, "times_s": times, "median_s": median, "ratios": ratios,
            "target_animatezero_lcm_4_le_0_5_s": target}  # fmt: skip


def few_step_markdown(fs: dict[str, Any]) -> str:
    s = fs["shape"]
    lines = [
        f"### Few-step samplers ({s['height']}x{s['width']}, {s['frames']} frames; DDIM {s['steps']} steps at "
        f"guidance {fs['guidance']}, few-step {s['few_steps']} steps)",
        "",
        "| case | median s | runs |",
        "|---|---:|---:|",
        *[f"| {k} | {_fmt(v)} | {len(fs['times_s'][k])} |" for k, v in fs["median_s"].items()],
        "",
        *[f"- {k}: {_fmt(v, 2)}x" for k, v in fs["ratios"].items()],
    ]
    if fs["target_animatezero_lcm_4_le_0_5_s"]:
        t = fs["target_animatezero_lcm_4_le_0_5_s"]
        lines.append(f"- target AnimateZero + LCM 4 steps <= 0.5 s: {_fmt(t['value_s'])} s, met: {t['met']}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    device, dtype = torch.device(args.device), oracle.DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    files = oracle.synthetic_checkpoints(args.size, args.cache_dir, log=log)
    meta = environment(args, device)
    meta["checkpoints"] = [str(files.sd15), str(files.motion)]
    log(f"[benchmark] {meta['device_name']} {args.size} {args.dtype} {args.height}x{args.width}x{args.frames}")

    start = time.perf_counter()
    pipe = AnimateZeroPipeline.from_single_files(files.sd15, files.motion, device=device, dtype=dtype)
    meta["load_s"] = time.perf_counter() - start
    gen = torch.Generator("cpu").manual_seed(args.seed)
    h, w = args.height // 8, args.width // 8
    video_latents = torch.randn(1, 4, args.frames, h, w, generator=gen)  # [1, 4, f, h, w]
    image_latents = torch.randn(1, 4, h, w, generator=gen)  # [1, 4, h, w]
    if args.few_step_only:  # only the few-step comparison (no FLOP count, no other runs)
        fs = few_step_runs(pipe, args, video_latents, image_latents, device, log)
        if device.type == "cpu":
            meta["process_rss_peak_gib"] = rss_peak_gib()
        return {"meta": meta, "few_step": fs, "markdown": few_step_markdown(fs)}
    counts = count_flops(pipe, args.frames, args.height, args.width, guided=args.guidance != 1.0)
    log(f"[benchmark] loaded in {meta['load_s']:.1f} s, FLOPs counted at {time.perf_counter() - start:.1f} s")

    eager = not args.compile_only  # --compile-only: no eager runs, no diffusers
    raw = our_runs(pipe, args, video_latents, image_latents, device) if eager else {}
    log(f"[benchmark] our runs done at {time.perf_counter() - start:.1f} s")
    parity = None
    if eager and not args.no_diffusers:
        our_frames = raw["ours_text_to_video"].pop("result").frames
        if device.type == "cuda":
            park(pipe, "cpu")
        extra, parity = diffusers_runs(files, args, video_latents, device, dtype, our_frames)
        raw.update(extra)
        if device.type == "cuda":
            park(pipe, device)
        log(f"[benchmark] diffusers runs done at {time.perf_counter() - start:.1f} s")

    runs = {name: summarize(name, r, counts, args.steps) for name, r in raw.items()}
    ratios: dict[str, float | None] = {}
    if eager:
        t2v_s = runs["ours_text_to_video"]["median_s"]
        ratios["controls_overhead"] = runs["ours_animate"]["median_s"] / t2v_s
        ratios["controls_overhead_kv_current"] = runs["ours_animate_kv_current"]["median_s"] / t2v_s
    if "diffusers_text_to_video" in runs:
        base = runs["diffusers_text_to_video"]
        for r in runs.values():
            r["x_diffusers"] = r["median_s"] / base["median_s"]
        ratios["animatezero_vs_diffusers_t2v"] = runs["ours_animatezero"]["x_diffusers"]
        ratios["text_to_video_vs_diffusers_t2v"] = runs["ours_text_to_video"]["x_diffusers"]
        if base["peak_mem_gib"]:
            ratios["animatezero_peak_mem_vs_diffusers"] = (
                runs["ours_animatezero"]["peak_mem_gib"] / base["peak_mem_gib"]
            )

    report: dict[str, Any] = {
        "meta": meta,
        "flops": {"method": meta["flop_count"], **{f"{k}_tflop": v / 1e12 for k, v in counts.items()}},
        "runs": runs,
        "ratios": ratios,
        "parity": parity,
        "targets": check_targets(args, runs, ratios) if eager else None,
        "compile": None,
        "compile_cache": None,
        "memory_options": None,
    }
    if args.compile:
        compiled, report["compile_cache"] = compile_runs(pipe, args, video_latents, image_latents, device, dtype)
        report["compile"] = summarize_compiled(compiled, runs, counts, args.steps)
    if args.memory_options:
        report["memory_options"] = [
            {
                "option": "default (vae_chunk_size=8)",
                "text_to_video_median_s": runs["ours_text_to_video"]["median_s"],
                "text_to_video_peak_mem_gib": runs["ours_text_to_video"]["peak_mem_gib"],
                "animatezero_median_s": runs["ours_animatezero"]["median_s"],
                "animatezero_peak_mem_gib": runs["ours_animatezero"]["peak_mem_gib"],
            },
            *memory_option_runs(pipe, args, video_latents, image_latents, device, dtype),
        ]
    if args.few_step:
        report["few_step"] = few_step_runs(pipe, args, video_latents, image_latents, device, log)
    if device.type == "cpu":
        meta["process_rss_peak_gib"] = rss_peak_gib()
        meta["peak_mem_note"] = "CPU: no per-run peak; process_rss_peak_gib is the whole process (loading included)"
    report["markdown"] = markdown(report) + (few_step_markdown(report["few_step"]) if args.few_step else "")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args, log=lambda s: print(s, file=sys.stderr))
    text = json.dumps(report, indent=1)
    print(text)
    print()
    print(report["markdown"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
