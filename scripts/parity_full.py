"""Full-size parity with diffusers: the parity tests' comparisons at the real SD1.5 + motion v2 shapes.

    python scripts/parity_full.py [--device cuda|cpu] [--dtypes fp32 fp16] [--height 512 --width 512] [--frames 16]
        [--steps 25] [--size full|tiny] [--cache-dir DIR] [--json out.json] [--tolerance 1e-4]

Both sides load the same synthetic single files (random weights with the real keys and shapes, ``models.synthetic``,
stored in fp16 and cached; both sides cast them to the compute dtype). Components, on the same inputs:
  clip               text encoder last hidden state, 2 prompts [2, 77, 768] (transformers via diffusers' converter)
  unet_image         one UNet step on [2, 4, h, w] (UNet2DConditionModel)
  unet_video         one video UNet step on [2, 4, f, h, w] (UNetMotionModel, v2, §4.4 per-frame GroupNorm patch)
  vae_decode         VAE decode of 2 latents (AutoencoderKL)
  text_to_video_*    end to end from the same initial latents, guidance 7.5: our text_to_video against diffusers'
                     AnimateDiffPipeline (§4.2 DDIM, patched norms): final latents and frames in [0, 1]
For each dtype: max |ours - diffusers|, max |diffusers| (scale) and their ratio; for fp16 also both sides' error
against the fp32 reference (when fp32 ran too), so our fp16 error can be read against diffusers' own. One side is
loaded, computed and freed before the other (the full fp32 models are ~6 GB per side). fp32 on CUDA runs with TF32 off.
Exit status 1 when an fp32 ratio exceeds ``--tolerance``.

On a CPU, ``--device cpu --height 256 --width 256 --frames 4 --steps 2`` takes a few minutes and ~11 GB of memory.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests import oracle  # noqa: E402

PROMPTS = ("a corgi running on the beach at golden hour, highly detailed", "")
GUIDANCE = 7.5
COMPONENTS = ("clip", "unet_image", "unet_video", "vae_decode", "text_to_video")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=tuple(oracle.DTYPES),
        default=None,
        help="default: fp32 fp16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: a quick check of this script")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=25, help="end-to-end sampling steps")
    p.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default: ~/.cache/...)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="fp32 max error / scale allowed")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but no CUDA device is available")
    args.dtypes = args.dtypes or (["fp32", "fp16"] if args.device == "cuda" else ["fp32"])
    if args.height % 64 or args.width % 64:
        p.error("--height and --width must be multiples of 64 (the UNet halves the latent three times)")
    return args


def make_inputs(files: oracle.SyntheticFiles, args) -> dict[str, Any]:
    """Deterministic fp32 CPU inputs shared by both sides."""
    from models.tokenizer import CLIPTokenizer

    g = torch.Generator().manual_seed(args.seed)
    h, w = args.height // 8, args.width // 8
    return {
        "ids": CLIPTokenizer()(list(PROMPTS)),  # [2, 77]
        "t": torch.tensor([801, 801]),
        "context": torch.randn(2, 77, files.unet.context_dim, generator=g),  # [2, 77, d]
        "image": torch.randn(2, 4, h, w, generator=g),  # [2, 4, h, w]
        "video": torch.randn(2, 4, args.frames, h, w, generator=g),  # [2, 4, f, h, w]
        "z": torch.randn(2, 4, h, w, generator=g),  # scaled latents ~ N(0, 1)
        "latents": torch.randn(1, 4, args.frames, h, w, generator=g),  # [1, 4, f, h, w]
    }


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Times named sections into ``self.seconds`` and logs them."""

    def __init__(self, device: torch.device, log):
        self.device, self.log, self.seconds = device, log, {}

    def __call__(self, name: str, fn):
        sync(self.device)
        start = time.perf_counter()
        out = fn()
        sync(self.device)
        self.seconds[name] = time.perf_counter() - start
        self.log(f"[parity] {name}: {self.seconds[name]:.1f} s")
        return out


@torch.inference_mode()
def ours(files, inputs, args, device, dtype, clock: Clock) -> dict[str, torch.Tensor]:
    from animatezero.pipeline import AnimateZeroPipeline

    pipe = clock(
        "ours/load", lambda: AnimateZeroPipeline.from_single_files(files.sd15, files.motion, device=device, dtype=dtype)
    )
    x = {k: v.to(device) for k, v in inputs.items()}
    c = lambda v: v.to(dtype)  # noqa: E731
    out = {}
    if "clip" in args.components:
        out["clip"] = clock("ours/clip", lambda: pipe.text_encoder(x["ids"]))
    if "unet_image" in args.components:
        out["unet_image"] = clock("ours/unet_image", lambda: pipe.unet(c(x["image"]), x["t"], c(x["context"])))
    if "unet_video" in args.components:
        out["unet_video"] = clock(
            "ours/unet_video", lambda: pipe.unet(c(x["video"]), x["t"], c(x["context"]), motion=pipe.motion_module)
        )
    if "vae_decode" in args.components:
        out["vae_decode"] = clock("ours/vae_decode", lambda: pipe.vae.decode(c(x["z"]), chunk_size=1))
    if "text_to_video" in args.components:
        video = clock(
            "ours/text_to_video",
            lambda: pipe.text_to_video(
                PROMPTS[0], negative_prompt=PROMPTS[1], num_frames=args.frames, height=args.height,
                width=args.width, steps=args.steps, guidance_scale=GUIDANCE, latents=inputs["latents"],
            ),
        )  # fmt: skip
        out["text_to_video_latents"], out["text_to_video_frames"] = video.latents, video.frames
    out = {k: v.float().cpu() for k, v in out.items()}
    pipe = None
    free(device)
    return out


@torch.inference_mode()
def diffusers_side(files, inputs, args, device, dtype, clock: Clock) -> dict[str, torch.Tensor]:
    wanted = set(args.components)
    x = {k: v.to(device) for k, v in inputs.items()}
    c = lambda v: v.to(dtype)  # noqa: E731
    out, f = {}, args.frames
    with tempfile.TemporaryDirectory(prefix="animatezero_parity_cfg_") as tmp:
        config_dir = oracle.write_config_dir(files, tmp)
        text_encoder = clock(
            "diffusers/load_clip", lambda: oracle.load_text_encoder(files, config_dir, dtype).to(device)
        )
        if "clip" in wanted:
            out["clip"] = clock("diffusers/clip", lambda: text_encoder(input_ids=x["ids"]).last_hidden_state)
        vae = clock("diffusers/load_vae", lambda: oracle.load_vae(files, config_dir, dtype).to(device))
        if "vae_decode" in wanted:
            out["vae_decode"] = clock(
                "diffusers/vae_decode", lambda: vae.decode(c(x["z"]) / oracle.LATENT_SCALE).sample
            )
        unet2d = clock("diffusers/load_unet", lambda: oracle.load_unet2d(files, config_dir, dtype).to(device))
        if "unet_image" in wanted:
            out["unet_image"] = clock(
                "diffusers/unet_image",
                lambda: unet2d(c(x["image"]), x["t"], encoder_hidden_states=c(x["context"])).sample,
            )
        if wanted & {"unet_video", "text_to_video"}:
            adapter = clock("diffusers/load_adapter", lambda: oracle.load_motion_adapter(files, config_dir, dtype))
            unet = clock("diffusers/motion_unet", lambda: oracle.motion_unet(unet2d, adapter).to(device, dtype))
            unet2d = None
            free(device)
            patched = oracle.patch_motion_norms(unet)
            clock.log(f"[parity] §4.4 GroupNorm patch on {patched} diffusers motion modules")
            if "unet_video" in wanted:
                # UNetMotionModel (0.42) takes the text context repeated per frame, [(b f), n, d]
                context = c(x["context"]).repeat_interleave(f, 0)
                out["unet_video"] = clock(
                    "diffusers/unet_video", lambda: unet(c(x["video"]), x["t"], encoder_hidden_states=context).sample
                )
            if "text_to_video" in wanted:
                pipe = oracle.build_animatediff(
                    files, config_dir, device=device, dtype=dtype, unet=unet, vae=vae, text_encoder=text_encoder,
                    adapter=adapter,
                )  # fmt: skip
                final = {}

                def keep_latents(pipe, i, t, kwargs):
                    final["latents"] = kwargs["latents"]
                    return kwargs

                video = clock(
                    "diffusers/text_to_video",
                    lambda: pipe(
                        prompt=PROMPTS[0], negative_prompt=PROMPTS[1], num_frames=f, height=args.height,
                        width=args.width, num_inference_steps=args.steps, guidance_scale=GUIDANCE,
                        latents=c(x["latents"]), output_type="pt", callback_on_step_end=keep_latents,
                    ).frames[0],
                )  # fmt: skip
                out["text_to_video_latents"], out["text_to_video_frames"] = final["latents"], video
                pipe = None
    out = {k: v.float().cpu() for k, v in out.items()}
    free(device)
    return out


def compare(ours_out: dict, ref: dict) -> dict[str, dict]:
    rows = {}
    for name, ref_value in ref.items():
        row = oracle.max_err(ours_out[name], ref_value)
        row["shape"] = list(ref_value.shape)
        row["finite"] = bool(torch.isfinite(ours_out[name]).all() and torch.isfinite(ref_value).all())
        rows[name] = row
    return rows


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":  # fp32 means fp32: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    files = oracle.synthetic_checkpoints(args.size, args.cache_dir, log=log)
    inputs = make_inputs(files, args)
    seconds: dict[str, float] = {}
    results, outputs = {}, {}
    for name in args.dtypes:
        dtype = oracle.DTYPES[name]
        clock = Clock(device, lambda s, name=name: log(s.replace("[parity]", f"[parity {name}]")))
        mine = ours(files, inputs, args, device, dtype, clock)
        ref = diffusers_side(files, inputs, args, device, dtype, clock)
        results[name] = compare(mine, ref)
        outputs[name] = (mine, ref)
        seconds.update({f"{name}/{k}": v for k, v in clock.seconds.items()})
    if "fp32" in outputs:
        ref32 = outputs["fp32"][1]
        for name, (mine, ref) in outputs.items():
            if name != "fp32":
                results[f"{name}_vs_fp32_reference"] = {
                    "ours": compare(mine, ref32),
                    "diffusers": compare(ref, ref32),
                }
    fp32 = results.get("fp32", {})
    worst = max((r["rel"] for r in fp32.values()), default=None)
    import diffusers
    import transformers

    return {
        "meta": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "size": args.size,
            "height": args.height,
            "width": args.width,
            "frames": args.frames,
            "steps": args.steps,
            "guidance": GUIDANCE,
            "checkpoints": [str(files.sd15), str(files.motion)],
            "metric": "max_abs = max |ours - diffusers|, scale = max |diffusers|, rel = max_abs / scale",
        },
        "results": results,
        "fp32_worst_rel": worst,
        "tolerance": args.tolerance,
        "ok": None if worst is None else bool(worst <= args.tolerance),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args, log=lambda s: print(s, file=sys.stderr))
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if report["ok"] in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
