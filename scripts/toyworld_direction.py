"""Why the toy world's clips do not move as captioned: three measurements of the text -> direction path.

AnimateDiff's motion module has no text input; the caption reaches it only through the frozen spatial UNet's
features. These commands measure each link of that path on the shipped toy-world model (README "Toy world"):

    python scripts/toyworld_direction.py probe     # is the motion word in the UNet's features? (linear probe)
    python scripts/toyworld_direction.py shift     # do the x_0 predictions move the object as captioned?
    python scripts/toyworld_direction.py twoway    # can a fresh motion module learn direction from a 2-caption world?

``probe`` fits a logistic regression from the spatial mean of each UNet block's output (one frame, noised to t) to
the caption's motion (6 classes) and reports held-out accuracy per block. ``shift`` runs the video UNet once on pure
noise at t for a caption of each direction and reports, for the mean of the decoded x_0 predictions, how far the
object's centroid lies in frame 15 from frame 0 (the world's clips travel 24 px; a module that knew the direction
would show it, the blob being the average over positions). ``twoway`` trains a fresh v2 motion module (the trainer's
loss and schedule) on clips of two captions only, e.g. a cyan square always moving left and a yellow one always
moving right, then samples each caption with the same seeds and reports the fitted tracks.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import train_toyworld as trainer  # noqa: E402

from animatezero import toyworld  # noqa: E402
from animatezero.pipeline import AnimateZeroPipeline  # noqa: E402
from evaluation import toyworld as tw  # noqa: E402
from evaluation.toyworld_metrics import score_video  # noqa: E402
from models.ddim import DDIMSchedule  # noqa: E402
from models.loading import load_sd15  # noqa: E402
from models.motion_module import MotionModules  # noqa: E402

DIRECTIONS = ("moving right", "moving left", "moving up", "moving down")


def _pipeline(motion_module: Path | None) -> AnimateZeroPipeline:
    checkpoint, shipped = toyworld.files()
    size = (toyworld.HEIGHT, toyworld.WIDTH)
    pipe = AnimateZeroPipeline.from_single_files(checkpoint, motion_module or shipped, default_size=size)
    pipe.progress = False
    return pipe


@torch.no_grad()
def probe(n_train: int = 1200, n_test: int = 400, timesteps=(900, 500, 100), seed: int = 0) -> dict[int, dict]:
    """Held-out accuracy of a linear probe for the motion word, per UNet block and timestep (chance 1/6)."""
    pipe = _pipeline(None)
    unet, alphas = pipe.unet, DDIMSchedule().alphas_cumprod
    names = [f"input_blocks.{i}" for i in range(len(unet.input_blocks))] + ["middle_block"]
    feats: dict[str, Tensor] = {}
    hooks = [unet.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o)) for n in names]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)

    def data(n: int, t: int) -> tuple[dict[str, Tensor], Tensor]:
        scenes = [tw.sample_scene(rng.randrange(tw.EVAL_SEED_BASE)) for _ in range(n)]
        z = pipe.vae.encode(tw.render_batch(scenes, [0.5] * n) * 2 - 1)  # [n, 4, 8, 8]
        zt = alphas[t].sqrt() * z + (1 - alphas[t]).sqrt() * torch.randn(z.shape, generator=gen)
        unet(zt, torch.full((n,), t), pipe.encode_prompt([s.caption for s in scenes]))
        labels = torch.tensor([tw.MOTIONS.index(s.motion) for s in scenes])
        return {k: feats[k].mean((2, 3)) for k in names}, labels  # [n, c] each: the spatial mean

    out = {}
    try:
        for t in timesteps:
            train, y = data(n_train, t)
            test, y_test = data(n_test, t)
            out[t] = {k: _fit_probe(train[k], y, test[k], y_test) for k in names}
    finally:
        for h in hooks:
            h.remove()
    return out


def _fit_probe(x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor) -> float:
    """Standardise, fit an L2-regularised multinomial logistic regression (L-BFGS), return test accuracy."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    k = len(tw.MOTIONS)
    with torch.enable_grad():
        w = torch.zeros(x.shape[1], k, requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + 1e-3 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return ((x_test @ w + b).argmax(1) == y_test).float().mean().item()


@torch.no_grad()
def shift(
    motion_module: Path | None = None, timesteps=(900, 700, 500), batch: int = 16, color: str = "yellow"
) -> dict[tuple[int, str], tuple[float, float]]:
    """(dx, dy) in pixels from frame 0 to frame 15 of the object's centroid in the mean decoded x_0 prediction of the
    video UNet on pure noise (seed 1) at each t, for a ``color`` square of each direction on black."""
    pipe = _pipeline(motion_module)
    alphas = DDIMSchedule().alphas_cumprod
    f = tw.FRAMES
    out = {}
    for t in timesteps:
        for motion in DIRECTIONS:
            ctx = pipe.encode_prompt([tw.caption(color, "square", motion, "black")] * batch)  # [b, 77, d]
            z = torch.randn(batch, 4, f, 8, 8, generator=torch.Generator().manual_seed(1))
            eps = pipe.unet(z, torch.full((batch,), t), ctx, motion=pipe.motion_module)
            x0 = (z - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()  # [b, 4, f, 8, 8]
            img = (pipe.vae.decode(x0.transpose(1, 2).flatten(0, 1)).clamp(-1, 1) + 1) / 2  # [b * f, 3, 64, 64]
            out[(t, motion)] = _centroid_shift(img.unflatten(0, (batch, f)).mean(0))  # the batch's mean picture
    return out


@torch.no_grad()
def reference_shift(clips: int = 64, color: str = "yellow") -> dict[str, tuple[float, float]]:
    """What :func:`shift` would show for a module that knew the direction: the same centroid measure on the decoded
    mean latent of ``clips`` world clips of each caption (the best x_0 prediction as t -> T). Measured: 23 px along
    the motion, under 0.2 px across it."""
    checkpoint, _ = toyworld.files()
    _, vae, _ = load_sd15(checkpoint)
    out = {}
    for motion in DIRECTIONS:
        attrs = {"color": color, "shape": "square", "motion": motion, "background": "black"}
        scenes = [tw.scene_for(attrs, 5000 + k) for k in range(clips)]
        frames = tw.render_batch([s for s in scenes for _ in range(tw.FRAMES)], tw.clip_times() * clips) * 2 - 1
        mean = vae.encode(frames).unflatten(0, (clips, tw.FRAMES)).mean(0)  # [f, 4, 8, 8]
        out[motion] = _centroid_shift((vae.decode(mean).clamp(-1, 1) + 1) / 2)
    return out


def _centroid_shift(img: Tensor) -> tuple[float, float]:
    """(dx, dy) from the first to the last frame of ``img [f, 3, H, W]`` of the centroid of its distance from black."""
    centres = torch.arange(img.shape[-1], dtype=torch.float32) + 0.5
    w = (img - torch.tensor(tw.BACKGROUNDS["black"]).view(1, 3, 1, 1)).abs().sum(1)  # [f, H, W]
    cx = (w.sum(1) * centres).sum(1) / w.sum((1, 2))  # [f]
    cy = (w.sum(2) * centres).sum(1) / w.sum((1, 2))
    return (cx[-1] - cx[0]).item(), (cy[-1] - cy[0]).item()


def twoway(
    steps: int, pair: list[tuple[str, str]], clips: int = 200, seeds: int = 8, lr: float = 5e-4, cap: float = 100.0,
    save: Path | None = None,
) -> dict[str, list[dict[str, float]]]:  # fmt: skip
    """Train a fresh motion module on a world of two captions (``pair``: (color, motion) each; a square on black),
    with the trainer's loss (capped at ``cap``), schedule and batch of 2 clips, on the shipped frozen UNet and text
    encoder; then sample each caption at seeds 0..seeds-1 (10 steps, guidance 5). Returns per caption the scores
    (motion_acc, motion_dx, motion_dy, motion_size_ratio) of each seed."""
    torch.manual_seed(0)
    unet, vae, text = load_sd15(toyworld.files()[0])
    tok = trainer.CLIPTokenizer()
    scenes = [
        tw.scene_for({"color": c, "shape": "square", "motion": m, "background": "black"}, k)
        for k, (c, m) in zip(range(clips), pair * clips)
    ]
    with torch.no_grad():
        frames = tw.render_batch([s for s in scenes for _ in range(tw.FRAMES)], tw.clip_times() * clips) * 2 - 1
        latents = torch.cat([vae.encode(x) for x in frames.split(400)])  # [clips * f, 4, 8, 8]
        latents = latents.unflatten(0, (clips, tw.FRAMES)).transpose(1, 2)  # [clips, 4, f, 8, 8]
    captions = [s.caption for s in scenes]
    motion = MotionModules(trainer.MOTION)
    for name, p in motion.named_parameters():
        if "proj_out" in name:
            torch.nn.init.zeros_(p)
    opt = torch.optim.AdamW(motion.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    alphas, rng = DDIMSchedule().alphas_cumprod, random.Random(0)
    unet.requires_grad_(False)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = trainer.lr_at(step, steps, lr)
        idx = [rng.randrange(clips) for _ in range(2)]
        ctx = trainer.caption_context(rng, text, tok, [captions[i] for i in idx])  # [2, 77, d]
        zt, t, eps = trainer.noisy(latents[torch.tensor(idx)], alphas, high=True)
        loss = trainer.high_noise_loss(unet(zt, t, ctx, motion=motion), eps, t, alphas, cap)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(motion.parameters(), 1.0)
        opt.step()
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    if save is not None:
        trainer.save_state_dict({k: v.half() for k, v in motion.state_dict().items()}, save)
    pipe = _pipeline(None)
    pipe.motion_module.load_state_dict(motion.state_dict())
    out: dict[str, list[dict[str, float]]] = {}
    keys = ("motion_acc", "motion_dx", "motion_dy", "motion_size_ratio")
    with torch.no_grad():
        for color, m in pair:
            cap = tw.caption(color, "square", m, "black")
            for seed in range(seeds):
                scores = score_video(pipe.text_to_video(cap, steps=10, guidance_scale=5.0, seed=seed).frames, cap)
                out.setdefault(cap, []).append({k: scores[f"toyworld_{k}"] for k in keys})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe", help="linear probe of the motion word in the UNet's features")
    p.add_argument("--n-train", type=int, default=1200)
    p.add_argument("--n-test", type=int, default=400)
    s = sub.add_parser("shift", help="frame 0 -> 15 centroid shift of the x_0 predictions per direction")
    s.add_argument("--motion-module", type=Path, help="a motion module file (default: the shipped one)")
    s.add_argument("--batch", type=int, default=16)
    w = sub.add_parser("twoway", help="train a motion module on two captions, then sample them")
    w.add_argument("--steps", type=int, default=600)
    w.add_argument("--pair", default="cyan:moving left,yellow:moving right", help="color:motion,color:motion")
    w.add_argument("--clips", type=int, default=200)
    w.add_argument("--seeds", type=int, default=8)
    w.add_argument("--cap", type=float, default=100.0, help="the loss weight's cap (the trainer's motion stage: 10)")
    w.add_argument("--save", type=Path, help="write the trained module here (fp16 safetensors)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "probe":
        for t, accs in probe(args.n_train, args.n_test).items():
            print(f"t={t}: " + " ".join(f"{k}={v:.2f}" for k, v in accs.items()))
    elif args.command == "shift":
        for (t, motion), (dx, dy) in shift(args.motion_module, batch=args.batch).items():
            print(f"t={t} {motion:12s} dx {dx:+5.1f} dy {dy:+5.1f}")
        for motion, (dx, dy) in reference_shift().items():
            print(f"reference {motion:12s} dx {dx:+5.1f} dy {dy:+5.1f}  (decoded mean latent of 64 clips)")
    else:
        pair = [tuple(item.split(":")) for item in args.pair.split(",")]
        if len(pair) != 2 or any(len(x) != 2 for x in pair):
            ap.error(f"--pair takes two color:motion items separated by a comma, got {args.pair!r}")
        for cap, rows in twoway(args.steps, pair, args.clips, args.seeds, cap=args.cap, save=args.save).items():
            hits = sum(r["motion_acc"] for r in rows)
            tracks = " ".join(
                f"({r['motion_dx']:+.1f},{r['motion_dy']:+.1f},x{r['motion_size_ratio']:.2f})" for r in rows
            )
            print(f"{cap}: {hits:.0f}/{len(rows)} as captioned; (dx, dy, size ratio) per seed: {tracks}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
