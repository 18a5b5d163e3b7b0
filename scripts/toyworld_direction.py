"""Why the toy world's clips did not move as captioned at first: measurements of the text -> direction path.

AnimateDiff's motion module has no text input; the caption reaches it only through the frozen spatial UNet's
features. These commands measure each link of that path on the shipped toy-world model (docs/toyworld.md §5-6):

    python scripts/toyworld_direction.py probe     # is the motion word in the UNet's features? (linear probe)
    python scripts/toyworld_direction.py shift     # do the x_0 predictions move the object as captioned?
    python scripts/toyworld_direction.py position  # does each motion module's input know where its pixel is?
    python scripts/toyworld_direction.py evidence  # how much does a noisy clip show its own direction, per t?
    python scripts/toyworld_direction.py twoway    # can a fresh motion module learn direction from a 2-caption world?
    python scripts/toyworld_direction.py sign      # does it know the axis but not the way along it? and why?

``probe`` fits a logistic regression from the spatial mean of each UNet block's output (one frame, noised to t) to
the caption's motion (6 classes) and reports held-out accuracy per block. ``shift`` runs the video UNet once on pure
noise at t for a caption of each direction and reports, for the mean of the decoded x_0 predictions, how far the
object's centroid lies in frame 15 from frame 0 (the world's clips travel 24 px; a module that knew the direction
would show it, the blob being the average over positions). ``position`` fits a least-squares map from each motion
module's per-pixel input features (video UNet on pure noise at t) to the pixel's column, and reports held-out R^2:
the temporal attention sees one pixel at a time, so a direction needs features that say where that pixel is.
``evidence`` measures, on latents of left- and right-moving clips, how well a linear read-out of the noisy clip x_t
tells the two apart at each t (what the clip itself shows, without the caption), and how much lower the x_0 error of
the per-frame mean clip is than that of the static mean (what knowing the direction is worth as t -> T).
``twoway`` trains a fresh v2 motion module (the trainer's
loss and schedule) on clips of two captions only, e.g. a cyan square always moving left and a yellow one always
moving right, then samples each caption with the same seeds and reports the fitted tracks.
``sign`` separates the two halves of a direction. Every motion of the world is its opposite played backwards, so a
module can learn the axis a caption names (horizontal, vertical, size) without the way along it; ``sign`` counts
held-out text-to-video clips that move as captioned, backwards, not at all, or otherwise. It then measures what the
frozen spatial UNet gives the motion modules to tell the way from: how much their inputs change when ``moving
right`` becomes ``moving left`` against ``moving up``, and whether step-1 images put the object where the world's
frame 0 has it (a right-moving object starts left of centre, so a model of frame 0 must know the sign).
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

DIRECTIONS = ("moving right", "moving left", "moving up", "moving down")
ALPHAS = DDIMSchedule().alphas_cumprod  # alpha_bar_t of the schedule every stage trains and samples on


def _pipeline(motion_module: Path | None, checkpoint: Path | None = None) -> AnimateZeroPipeline:
    shipped_checkpoint, shipped = toyworld.files()
    size = (toyworld.HEIGHT, toyworld.WIDTH)
    pipe = AnimateZeroPipeline.from_single_files(
        checkpoint or shipped_checkpoint, motion_module or shipped, default_size=size
    )
    pipe.progress = False
    return pipe


def _record_inputs(motion_module, feats: dict[str, Tensor]) -> list:
    """Hooks that store each motion module's input ``[(b f), c, h, w]`` in ``feats`` under its name (remove them
    when done)."""
    from models.motion_module import VanillaTemporalModule

    return [
        m.register_forward_pre_hook(lambda mod, args, n=n: feats.__setitem__(n, args[0]))
        for n, m in motion_module.named_modules()
        if isinstance(m, VanillaTemporalModule)
    ]


@torch.no_grad()
def probe(n_train: int = 1200, n_test: int = 400, timesteps=(900, 500, 100), seed: int = 0) -> dict[int, dict]:
    """Held-out accuracy of a linear probe for the motion word, per UNet block and timestep (chance 1/6)."""
    pipe = _pipeline(None)
    unet, alphas = pipe.unet, ALPHAS
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


def _fit_probe(
    x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, classes: int = len(tw.MOTIONS), l2: float = 1e-3
) -> float:
    """Standardise, fit an L2-regularised multinomial logistic regression (L-BFGS), return test accuracy."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mu) / sd, (x_test - mu) / sd
    k = classes
    with torch.enable_grad():
        w = torch.zeros(x.shape[1], k, requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w + b, y) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return ((x_test @ w + b).argmax(1) == y_test).float().mean().item()


def _square(color: str, motion: str, seed: int) -> tw.Scene:
    """The world's scene of ``seed`` for a ``color`` square doing ``motion`` on black."""
    return tw.scene_for({"color": color, "shape": "square", "motion": motion, "background": "black"}, seed)


@torch.no_grad()
def _clip_latents(vae, scenes: list) -> Tensor:
    """The VAE latents ``[n, f, 4, 8, 8]`` of the rendered clips of ``scenes`` (encoded 400 frames at a time)."""
    frames = tw.render_batch([s for s in scenes for _ in range(tw.FRAMES)], tw.clip_times() * len(scenes)) * 2 - 1
    return torch.cat([vae.encode(x) for x in frames.split(400)]).unflatten(0, (len(scenes), tw.FRAMES))


@torch.no_grad()
def shift(
    motion_module: Path | None = None, timesteps=(900, 700, 500), batch: int = 16, color: str = "yellow"
) -> dict[tuple[int, str], tuple[float, float]]:
    """(dx, dy) in pixels from frame 0 to frame 15 of the object's centroid in the mean decoded x_0 prediction of the
    video UNet on pure noise (seed 1) at each t, for a ``color`` square of each direction on black."""
    pipe = _pipeline(motion_module)
    out = {}
    for t in timesteps:
        for motion in DIRECTIONS:
            ctx = pipe.encode_prompt([tw.caption(color, "square", motion, "black")] * batch)  # [b, 77, d]
            out[(t, motion)] = _x0_shift(pipe.unet, pipe.vae, pipe.motion_module, ctx, t)
    return out


@torch.no_grad()
def _x0_shift(unet, vae, motion, ctx: Tensor, t: int) -> tuple[float, float]:
    """:func:`_centroid_shift` of the batch's mean decoded x_0 prediction of the video UNet on pure noise (seed 1) at
    ``t``, one video per row of ``ctx [b, 77, d]``."""
    alphas, b, f = ALPHAS, ctx.shape[0], tw.FRAMES
    z = torch.randn(b, 4, f, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = unet(z, torch.full((b,), t), ctx, motion=motion)
    x0 = (z - (1 - alphas[t]).sqrt() * eps) / alphas[t].sqrt()  # [b, 4, f, 8, 8]
    img = (vae.decode(x0.transpose(1, 2).flatten(0, 1)).clamp(-1, 1) + 1) / 2  # [b * f, 3, 64, 64]
    return _centroid_shift(img.unflatten(0, (b, f)).mean(0))  # the batch's mean picture


@torch.no_grad()
def position(timesteps=(960, 500), batch: int = 8) -> dict[int, dict[str, float]]:
    """Held-out R^2 of a least-squares map from each motion module's per-pixel input features to the pixel's column,
    per t (video UNet with the shipped module on pure noise; the first half of the pixels fit, the rest scored).
    Modules at 1x1 have no column to find and are left out."""
    pipe = _pipeline(None)
    feats: dict[str, Tensor] = {}
    hooks = _record_inputs(pipe.motion_module, feats)
    ctx = pipe.encode_prompt([tw.caption("yellow", "square", "moving right", "black")] * batch)  # [b, 77, d]
    out: dict[int, dict[str, float]] = {}
    try:
        for t in timesteps:
            z = torch.randn(batch, 4, tw.FRAMES, 8, 8, generator=torch.Generator().manual_seed(0))
            pipe.unet(z, torch.full((batch,), t), ctx, motion=pipe.motion_module)
            out[t] = {}
            for name, x in feats.items():  # x: [(b f), c, h, w]
                n, c, h, w = x.shape
                if w < 2:
                    continue
                feat = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, c), torch.ones(n * h * w, 1)], 1)  # [n h w, c+1]
                col = torch.arange(w, dtype=torch.float32).repeat(n * h)  # [n h w]
                half = feat.shape[0] // 2
                fit = torch.linalg.lstsq(feat[:half], col[:half, None]).solution  # [c+1, 1]
                err = (feat[half:] @ fit).squeeze(1) - col[half:]
                out[t][name] = (1 - err.pow(2).mean() / col[half:].var()).item()
    finally:
        for h in hooks:
            h.remove()
    return out


def evidence(
    timesteps=(999, 950, 900, 800), n_train: int = 1000, n_test: int = 400, draws: int = 8
) -> tuple[dict[int, float], tuple[float, float]]:
    """(held-out accuracy per t of a logistic regression telling left- from right-moving clips by their noised latents
    x_t, fit on ``draws`` noise draws of ``n_train`` clips; (x_0 MSE of the per-frame mean of right-moving clips,
    x_0 MSE of their static mean) on held-out clips). Yellow squares on black; chance is 0.5."""
    _, vae, _ = load_sd15(toyworld.files()[0])
    alphas = ALPHAS
    gen = torch.Generator().manual_seed(0)

    def latents(n: int, base: int, motions=("moving left", "moving right")) -> Tensor:
        return _clip_latents(vae, [_square("yellow", motions[k % len(motions)], base + k) for k in range(n)])

    z_train, z_test = latents(n_train, 0), latents(n_test, 100_000)
    y_train, y_test = torch.arange(n_train) % 2, torch.arange(n_test) % 2  # 1: moving right
    accs = {}
    for t in timesteps:
        a = alphas[t]
        x = torch.cat([z_train.flatten(1)] * draws)  # [draws * n, f*4*8*8]
        x = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=gen)
        x_test = a.sqrt() * z_test.flatten(1) + (1 - a).sqrt() * torch.randn(z_test.flatten(1).shape, generator=gen)
        accs[t] = _fit_probe(x, y_train.repeat(draws), x_test, y_test, classes=2, l2=1e-2)
    right = latents(n_train // 2 + n_test // 2, 200_000, ("moving right",))
    fit, held = right[: n_train // 2], right[n_train // 2 :]
    mse = [(held - m).pow(2).mean().item() for m in (fit.mean(0, keepdim=True), fit.mean((0, 1), keepdim=True))]
    return accs, (mse[0], mse[1])


@torch.no_grad()
def reference_shift(clips: int = 64, color: str = "yellow") -> dict[str, tuple[float, float]]:
    """What :func:`shift` would show for a module that knew the direction: the same centroid measure on the decoded
    mean latent of ``clips`` world clips of each caption (the best x_0 prediction as t -> T). Measured: 23 px along
    the motion, under 0.2 px across it."""
    checkpoint, _ = toyworld.files()
    _, vae, _ = load_sd15(checkpoint)
    out = {}
    for motion in DIRECTIONS:
        mean = _clip_latents(vae, [_square(color, motion, 5000 + k) for k in range(clips)]).mean(0)  # [f, 4, 8, 8]
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
    save: Path | None = None, tmin: int = 0, unet_lr: float = 0.0, shift_timesteps=(960, 900),
    shift_batch: int = 16, report_every: int = 0,
) -> tuple[dict[str, list[dict[str, float]]], dict[tuple[int, str], tuple[float, float]]]:  # fmt: skip
    """Train a fresh motion module on a world of two captions (``pair``: (color, motion) each; a square on black),
    with the trainer's loss (capped at ``cap``), schedule and batch of 2 clips, on the shipped UNet and text encoder;
    then sample each caption at seeds 0..seeds-1 (10 steps, guidance 5).

    ``tmin`` > 0 draws the training timesteps uniformly from [tmin, T) instead of the trainer's high-noise draw;
    ``unet_lr`` > 0 trains the spatial UNet too, at that learning rate (else it is frozen, as in the trainer).
    Returns per caption the scores (motion_acc, motion_dx, motion_dy, motion_size_ratio) of each seed, and the
    :func:`_x0_shift` of each caption (``shift_batch`` videos) at each of ``shift_timesteps`` after training (and,
    with ``report_every``, printed every that many steps; the report draws no random numbers of the training's)."""
    torch.manual_seed(0)
    unet, vae, text = load_sd15(toyworld.files()[0])
    tok = trainer.CLIPTokenizer()
    scenes = [_square(c, m, k) for k, (c, m) in zip(range(clips), pair * clips)]
    latents = _clip_latents(vae, scenes).transpose(1, 2)  # [clips, 4, f, 8, 8]
    captions = [s.caption for s in scenes]
    motion = trainer.fresh_motion_module()
    groups = [{"params": list(motion.parameters()), "base_lr": lr}]
    if unet_lr > 0:
        groups.append({"params": list(unet.parameters()), "base_lr": unet_lr})
    unet.requires_grad_(unet_lr > 0)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))

    @torch.no_grad()
    def measure_shifts() -> dict[tuple[int, str], tuple[float, float]]:
        shifts = {}
        for t in shift_timesteps:
            for color, m in dict.fromkeys(pair):  # a caption given twice (one-direction world) is measured once
                cap = tw.caption(color, "square", m, "black")
                shifts[(t, cap)] = _x0_shift(unet, vae, motion, text(tok([cap] * shift_batch)), t)  # ctx [b, 77, d]
        return shifts

    alphas, rng = ALPHAS, random.Random(0)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = trainer.lr_at(step, steps, group["base_lr"])
        idx = [rng.randrange(clips) for _ in range(2)]
        ctx = trainer.caption_context(rng, text, tok, [captions[i] for i in idx])  # [2, 77, d]
        z0 = latents[torch.tensor(idx)]  # [2, 4, f, 8, 8]
        if tmin:
            t = torch.randint(tmin, alphas.numel(), (2,))
            eps = torch.randn_like(z0)
            a = alphas[t].view(2, 1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        else:
            zt, t, eps = trainer.noisy(z0, alphas, high=True)
        loss = trainer.high_noise_loss(unet(zt, t, ctx, motion=motion), eps, t, alphas, cap)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if report_every and (step + 1) % report_every == 0:
            report = " ".join(f"t={t} {cap.split()[1]}-{cap.split()[4]} dx {dx:+.1f}" for (t, cap), (dx, _) in
                              measure_shifts().items())  # fmt: skip
            print(f"step {step + 1} ({time.perf_counter() - start:.0f} s): x_0 shift {report}", flush=True)
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    if save is not None:
        trainer.save_state_dict({k: v.half() for k, v in motion.state_dict().items()}, save)
    unet.eval().requires_grad_(False)
    return_shifts = measure_shifts()
    pipe = _pipeline(None)
    pipe.motion_module.load_state_dict(motion.state_dict())
    pipe.unet.load_state_dict(unet.state_dict())
    out: dict[str, list[dict[str, float]]] = {}
    keys = ("motion_acc", "motion_dx", "motion_dy", "motion_size_ratio")
    with torch.no_grad():
        for color, m in dict.fromkeys(pair):
            cap = tw.caption(color, "square", m, "black")
            for seed in range(seeds):
                scores = score_video(pipe.text_to_video(cap, steps=10, guidance_scale=5.0, seed=seed).frames, cap)
                out.setdefault(cap, []).append({k: scores[f"toyworld_{k}"] for k in keys})
    return out, return_shifts


# ------------------------------------------------------------------------------------------- axis against sign
#: the opposite of each motion: the same clip played backwards (the world's motions are linear in time)
OPPOSITE = {
    "moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
    "moving down": "moving up", "growing": "shrinking", "shrinking": "growing",
}  # fmt: skip


def outcome(wanted: str, got: str) -> str:
    """How a clip's classified motion relates to its caption's: ``right``, ``reversed`` (the opposite motion: same
    axis, wrong sign), ``static``, or ``other`` (another axis, or size instead of position or back)."""
    if got == wanted:
        return "right"
    if got == OPPOSITE[wanted]:
        return "reversed"
    return "static" if got == "static" else "other"


@torch.no_grad()
def axis_sign(
    n: int = 48, motion_module: Path | None = None, checkpoint: Path | None = None, steps: int = 10
) -> dict[str, dict[str, int]]:
    """Text-to-video clips of the first ``n`` held-out pairs (the ablation's seeds), counted per motion by
    :func:`outcome`. A module that learned which axis a caption names but not which way along it shows as many
    ``reversed`` clips as ``right`` ones: every one of the world's motions is its opposite played backwards."""
    from evaluation.toyworld_metrics import classify_motion, detect_video

    pipe = _pipeline(motion_module, checkpoint)
    out: dict[str, dict[str, int]] = {m: {"right": 0, "reversed": 0, "static": 0, "other": 0} for m in tw.MOTIONS}
    for k, scene in enumerate(tw.eval_scenes(n)):
        video = pipe.text_to_video(scene.caption, steps=steps, guidance_scale=5.0, seed=tw.EVAL_SAMPLING_SEED + k)
        out[scene.motion][outcome(scene.motion, classify_motion(detect_video(video.frames)))] += 1
    return out


@torch.no_grad()
def word_change(checkpoint: Path | None = None, t: int = 950, n: int = 8, seed: int = 0) -> dict[str, float]:
    """How much the motion modules' inputs change when one word of a ``moving right`` caption changes: the relative
    norm of the change, averaged over the motion slots, for the spatial UNet alone (motion modules at identity) on
    pure noise at ``t``, ``n`` held-out appearances. ``moving left`` changes only the sign, ``moving up`` the axis;
    another color for scale."""
    pipe = _pipeline(None, checkpoint)
    identity = trainer.fresh_motion_module()  # proj_out zero: each module passes its input through
    feats: dict[str, Tensor] = {}
    hooks = _record_inputs(identity, feats)
    scenes = tw.eval_scenes(n)
    z = torch.randn(n, 4, tw.FRAMES, 8, 8, generator=torch.Generator().manual_seed(seed))

    def other_color(s: tw.Scene) -> str:
        return next(c for c in tw.COLORS if c not in (s.color, s.background))

    def run(motion: str, recolor: bool = False) -> list[Tensor]:
        caps = [tw.caption(other_color(s) if recolor else s.color, s.shape, motion, s.background) for s in scenes]
        pipe.unet(z, torch.full((n,), t), pipe.encode_prompt(caps), motion=identity)
        return list(feats.values())

    try:
        base = run("moving right")
        out = {}
        for label, args in {
            "moving left (sign)": ("moving left",),
            "moving up (axis)": ("moving up",),
            "growing": ("growing",),
            "another color": ("moving right", True),
        }.items():
            changed = run(*args)
            out[label] = sum(float((a - b).norm() / b.norm()) for a, b in zip(changed, base)) / len(base)
    finally:
        for h in hooks:
            h.remove()
    return out


@torch.no_grad()
def start_positions(checkpoint: Path | None = None, n: int = 16, steps: int = 10) -> dict[str, tuple[float, ...]]:
    """Mean object centre (x, y) in pixels of step-1 images per direction word (the same ``n`` held-out appearances
    and seeds for each word), beside the world's: the mean frame-0 centre of 2,000 clips of that direction. A
    text-to-image model that learned frame 0 puts a right-moving object left of centre; one that learned frames of
    any time in the clip has no reason to."""
    from evaluation.toyworld_metrics import detect

    pipe = _pipeline(None, checkpoint)
    scenes = tw.eval_scenes(n)
    out = {}
    for motion in DIRECTIONS:
        found = []
        for k, s in enumerate(scenes):
            caption = tw.caption(s.color, s.shape, motion, s.background)
            image = pipe.text_to_image(caption, steps=steps, guidance_scale=5.0, seed=3000 + k).image
            d = detect(image)
            if d.found:
                found.append((d.x, d.y))
        attrs = {"color": "red", "shape": "circle", "motion": motion, "background": "black"}
        world = [tw.scene_for(attrs, i) for i in range(2000)]
        out[motion] = (
            sum(x for x, _ in found) / max(len(found), 1),
            sum(y for _, y in found) / max(len(found), 1),
            sum(w.x0 for w in world) / len(world),
            sum(w.y0 for w in world) / len(world),
        )
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
    sub.add_parser("position", help="R^2 of each motion module's input features for its pixel's column")
    e = sub.add_parser(
        "evidence", help="direction read linearly from the noisy clip per t; what the direction is worth"
    )
    e.add_argument("--n-train", type=int, default=1000)
    e.add_argument("--n-test", type=int, default=400)
    w = sub.add_parser("twoway", help="train a motion module on two captions, then sample them")
    w.add_argument("--steps", type=int, default=600)
    w.add_argument("--pair", default="cyan:moving left,yellow:moving right", help="color:motion,color:motion")
    w.add_argument("--clips", type=int, default=200)
    w.add_argument("--seeds", type=int, default=8)
    w.add_argument("--cap", type=float, default=100.0, help="the loss weight's cap (the trainer's motion stage: 10)")
    w.add_argument("--save", type=Path, help="write the trained module here (fp16 safetensors)")
    w.add_argument("--tmin", type=int, default=0, help="train on t >= tmin only (0: the trainer's high-noise draw)")
    w.add_argument("--unet-lr", type=float, default=0.0, help="train the spatial UNet too at this rate (0: frozen)")
    w.add_argument("--report-every", type=int, default=0, help="print the x_0 shifts every N steps (0: at the end)")
    a = sub.add_parser("sign", help="axis against sign: clip outcomes, feature change per word, step-1 positions")
    a.add_argument("--motion-module", type=Path, help="a motion module file (default: the shipped one)")
    a.add_argument("--checkpoint", type=Path, help="an LDM single file (default: the shipped one)")
    a.add_argument("--n", type=int, default=48, help="held-out pairs to sample")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "probe":
        for t, accs in probe(args.n_train, args.n_test).items():
            print(f"t={t}: " + " ".join(f"{k}={v:.2f}" for k, v in accs.items()))
    elif args.command == "position":
        for t, r2 in position().items():
            print(f"t={t}: " + " ".join(f"{k.replace('.motion_modules.', ':')}={v:.2f}" for k, v in r2.items()))
    elif args.command == "evidence":
        accs, (per_frame, static) = evidence(n_train=args.n_train, n_test=args.n_test)
        for t, acc in accs.items():
            print(f"t={t} (alpha_bar {ALPHAS[t]:.4f}): left/right read from x_t: {acc:.3f}")
        print(f"x_0 MSE of right-moving clips: per-frame mean {per_frame:.4f}, static mean {static:.4f} "
              f"({1 - per_frame / static:.0%} lower knowing the direction)")  # fmt: skip
    elif args.command == "sign":
        for label, rel in word_change(args.checkpoint).items():
            print(f"motion-module inputs, 'moving right' -> {label}: {rel:.2f} relative change")
        for motion, (x, y, wx, wy) in start_positions(args.checkpoint).items():
            print(f"step-1 object centre, {motion:12s} ({x:4.1f}, {y:4.1f}) px; world frame 0 ({wx:4.1f}, {wy:4.1f})")
        for motion, counts in axis_sign(args.n, args.motion_module, args.checkpoint).items():
            print(f"text-to-video {motion:12s} " + " ".join(f"{k} {v}" for k, v in counts.items()))
    elif args.command == "shift":
        for (t, motion), (dx, dy) in shift(args.motion_module, batch=args.batch).items():
            print(f"t={t} {motion:12s} dx {dx:+5.1f} dy {dy:+5.1f}")
        for motion, (dx, dy) in reference_shift().items():
            print(f"reference {motion:12s} dx {dx:+5.1f} dy {dy:+5.1f}  (decoded mean latent of 64 clips)")
    else:
        pair = [tuple(item.split(":")) for item in args.pair.split(",")]
        if len(pair) != 2 or any(len(x) != 2 for x in pair):
            ap.error(f"--pair takes two color:motion items separated by a comma, got {args.pair!r}")
        tracks, shifts = twoway(
            args.steps, pair, args.clips, args.seeds, cap=args.cap, save=args.save, tmin=args.tmin,
            unet_lr=args.unet_lr, report_every=args.report_every,
        )  # fmt: skip
        for (t, cap), (dx, dy) in shifts.items():
            print(f"x_0 shift at t={t}, {cap}: dx {dx:+5.1f} dy {dy:+5.1f}")
        for cap, rows in tracks.items():
            hits = sum(r["motion_acc"] for r in rows)
            tracks_text = " ".join(
                f"({r['motion_dx']:+.1f},{r['motion_dy']:+.1f},x{r['motion_size_ratio']:.2f})" for r in rows
            )
            print(f"{cap}: {hits:.0f}/{len(rows)} as captioned; (dx, dy, size ratio) per seed: {tracks_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
