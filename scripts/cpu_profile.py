"""CPU figures for the speed work: one guided video UNet step, ours against diffusers, and one window-attention layer
against a global temporal attention layer. Prints figures; asserts nothing.

    python scripts/cpu_profile.py step [--size full|tiny] [--height 128 --width 128] [--frames 4] [--threads 1]
    python scripts/cpu_profile.py window [--frames 16] [--tokens 512] [--dim 320] [--heads 8] [--threads 1]

``step``: both UNets from the same synthetic single files (``tests/oracle.py``), fp32, one guided evaluation (batch
2) of a ``[2, 4, f, h/8, w/8]`` video; median of ``--repeats`` interleaved timed runs after one warm-up, then one run under
``torch.profiler`` for the CPU time in ``aten::copy_`` (layout changes and casts) and the top operators. Process CPU
time is reported next to wall time (the machine may be shared). diffusers runs with the per-frame GroupNorm patch, so
both compute the same thing; the max difference of the two outputs is printed.

``window``: a motion-module attention layer (``models.attention.Attention`` with positions) on ``[N, f, c]`` tokens:
the default (global) processor against ``FramePatternAttention`` with the paper's window pattern (with position
correction), and the window pattern's exactness against the gathered-keys reference.

``--allocator cached`` (glibc only) keeps freed memory in the process, as CUDA's caching allocator does. By default
glibc hands every block over 32 MB back to the kernel when it is freed, so each such temporary is a fresh ``mmap``
whose pages fault in on first touch: at full size (``--tokens 2048``: 40 MB per ``[N, f, 320]`` activation) that
costs about as much as the arithmetic, and a layer's time then counts its large temporaries more than its work. The
figures are printed with the mode they were measured in; measure both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def cache_freed_memory() -> None:
    """Make glibc's malloc serve every block from the heap and never trim it (``mallopt``: no ``mmap``d blocks, no
    trimming, 256 MB top pad): freed memory is reused without page faults, like a caching allocator."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as e:
        raise SystemExit(f"--allocator cached needs glibc (libc.so.6): {e}") from None
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # malloc.h
    for option, value in ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 256 << 20)):
        if libc.mallopt(option, value) != 1:
            raise SystemExit(f"mallopt({option}, {value}) failed: cannot switch glibc to a caching mode")


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``repeats`` calls (after one warm-up call)."""
    if warmup:
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def profiled(fn) -> tuple[float, list[tuple[str, float]]]:
    """Seconds of self CPU time in ``aten::copy_`` and the five most expensive operators (self CPU seconds)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    copy = sum(e.self_cpu_time_total for e in events if e.key == "aten::copy_") / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
    return copy, [(e.key, e.self_cpu_time_total / 1e6) for e in top]


def step(args) -> None:
    from tests import oracle

    files = oracle.synthetic_checkpoints(args.size, log=lambda s: print(s, file=sys.stderr))
    g = torch.Generator().manual_seed(0)
    h, w = args.height // 8, args.width // 8
    x = torch.randn(2, 4, args.frames, h, w, generator=g)  # [2, 4, f, h, w]
    ctx = torch.randn(2, 77, files.unet.context_dim, generator=g)  # [2, 77, d]
    t = torch.tensor(801)
    runs = {}

    from animatezero.pipeline import AnimateZeroPipeline

    if "ours" in args.sides:
        pipe = AnimateZeroPipeline.from_single_files(files.sd15, files.motion)
        runs["ours"] = lambda: pipe.unet(x, t, ctx, motion=pipe.motion_module)
    if "diffusers" in args.sides:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            config_dir = oracle.write_config_dir(files, tmp)
            dunet = oracle.build_animatediff(files, config_dir).unet
        oracle.patch_motion_norms(dunet)
        dctx = ctx.repeat_interleave(args.frames, 0)  # UNetMotionModel takes the context per frame, [(b f), n, d]
        runs["diffusers"] = lambda: dunet(x, t, encoder_hidden_states=dctx).sample
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in runs.items()}  # also the warm-up
        # interleaved, so a busy machine slows both sides alike
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn, 1, warmup=False))
        for name, fn in runs.items():
            wall, cpu = (statistics.median(tm[i] for tm in times[name]) for i in (0, 1))
            copy, top = profiled(fn)
            print(
                f"{name:10s} step: {wall:.3f} s wall, {cpu:.3f} s CPU (median of {args.repeats}); aten::copy_ {copy:.3f} s"
            )
            print("           top self CPU: " + ", ".join(f"{k} {v:.2f}s" for k, v in top))
        if len(runs) == 2:
            ratio = statistics.median(a[1] / b[1] for a, b in zip(times["ours"], times["diffusers"]))
            print(
                f"ours / diffusers, process CPU time: {ratio:.2f}x (median of interleaved pairs, {args.allocator} allocator)"
            )
            print(f"max |ours - diffusers| = {(outputs['ours'] - outputs['diffusers']).abs().max().item():.2e}")


def window(args) -> None:
    from animatezero.processors import FramePatternAttention
    from animatezero.windows import window_pattern
    from models.attention import Attention, attention

    torch.manual_seed(0)
    layer = Attention(args.dim, args.heads, max_positions=32).eval()
    x = torch.randn(args.tokens, args.frames, args.dim)  # [N, f, c]
    pattern = window_pattern(args.frames)
    windowed = FramePatternAttention(pattern)
    with torch.inference_mode():
        layer(x), windowed(layer, x, None)  # warm-up
        pairs = []  # interleaved, so a busy machine slows both alike
        for _ in range(args.repeats):
            pairs.append([timed(fn, 1, warmup=False)[0] for fn in (lambda: layer(x), lambda: windowed(layer, x, None))])
        glob, win = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        ratio = statistics.median(b / a for a, b in pairs)
        # exactness against explicitly gathered per-slot keys (the definition)
        pe = layer.pos_encoder.pe[0]
        q = layer.to_q(x + pe[pattern.query_pos])
        k = layer.to_k(x)[:, pattern.src] + layer.to_k(pe)[pattern.key_pos]  # [N, f, S, c]
        v = layer.to_v(x)[:, pattern.src] + layer.to_v(pe)[pattern.key_pos]
        ref = layer.to_out(attention(q[:, :, None], k, v, layer.heads)[:, :, 0])
        err = (windowed(layer, x, None) - ref).abs().max().item()
    print(
        f"window layer {win * 1e3:.1f} ms, global layer {glob * 1e3:.1f} ms: {ratio:.2f}x (median of interleaved pairs) "
        f"(N={args.tokens}, f={args.frames}, c={args.dim}, heads={args.heads}, {args.allocator} allocator; "
        f"max error vs gathered keys {err:.1e})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step")
    s.add_argument("--size", choices=("full", "tiny"), default="full")
    s.add_argument("--height", type=int, default=128)
    s.add_argument("--width", type=int, default=128)
    s.add_argument("--frames", type=int, default=4)
    s.add_argument("--sides", nargs="+", choices=("ours", "diffusers"), default=["ours", "diffusers"])
    wn = sub.add_parser("window")
    wn.add_argument("--frames", type=int, default=16)
    wn.add_argument("--tokens", type=int, default=512, help="N: spatial positions x batch (512: 2 x 16x16)")
    wn.add_argument("--dim", type=int, default=320)
    wn.add_argument("--heads", type=int, default=8)
    for q in (s, wn):
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--repeats", type=int, default=3)
        q.add_argument(
            "--allocator", choices=("default", "cached"), default="default",
            help="cached: glibc keeps freed memory (no page faults on reuse), as CUDA's caching allocator does",
        )  # fmt: skip
    args = p.parse_args(argv)
    if args.allocator == "cached":
        cache_freed_memory()
    torch.set_num_threads(args.threads)
    (step if args.what == "step" else window)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
