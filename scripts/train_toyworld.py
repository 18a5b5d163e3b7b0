"""Train the toy-world model: SD1.5 + AnimateDiff at a small width, in the original file formats, on CPU.

AnimateDiff's recipe, on the procedural world of :mod:`evaluation.toyworld`:

1. ``vae``: the SD1.5 VAE architecture at a small width (``ch`` 64, mult 1,1,1,1, one ResBlock per level: 64x64 RGB
   <-> 8x8x4) as an autoencoder (L1 + MSE + a small KL) on 32x32 crops that always hold the object, then rescaled
   exactly so that its latents times SD's 0.18215 have unit variance; ``decoder`` then fine-tunes its decoder on
   whole frames with the encoder frozen (as SD's ft-MSE VAE), beside the later stages if wanted.
2. ``text``: a CLIP text encoder of the real architecture (width 32, 2 layers, the real 49,408-token vocabulary and
   tokenizer) pre-trained on the world's captions (:class:`CaptionProbe`: the caption's four attributes from its
   end-of-text/padding tokens), then frozen, as SD freezes CLIP.
3. ``unet``: the SD1.5 UNet (``model_channels`` 64, mult 1,1,1,1, two ResBlocks per level, attention at levels 0-2)
   trained from scratch on single frames (text-to-image; eps prediction on AnimateDiff's linear-beta schedule, 10%
   empty captions for classifier-free guidance, EMA weights) with :func:`high_noise_loss`, which weights the loss
   toward high noise, where the prompt decides the picture. Widths are at least 64 where it matters: SD's GroupNorms
   have 32 groups, and at one channel per group the UNet's output norm would erase every per-image constant.
   ``refine`` then continues the UNet's EMA weights for a short stage at a low learning rate, half of its frames
   being their clip's frame 0 (the frame that AnimateZero's step 1 draws), and ``frame0`` for another on frame 0
   only (so that the UNet keeps which way a caption's motion goes: :func:`train_frame0`).
4. ``motion``: an AnimateDiff motion module in the v2 layout (with the mid-block module; ``proj_out``
   zero-initialised as in AnimateDiff) trained on 16-frame clips with the same loss, the spatial UNet and the text
   encoder frozen.
5. ``detail``: the ``frame0`` UNet continued with the plain eps loss at low noise (timesteps below 400, where an
   object's corners are drawn), the motion module frozen and unused, as a community SD1.5 fine-tune is made after
   the motion module it runs with (:func:`train_detail`).
6. ``export``: an LDM single file (``model.diffusion_model.*``, ``first_stage_model.*``,
   ``cond_stage_model.transformer.text_model.*``) and a motion module (``down_blocks.*``) as fp16 safetensors, with
   their SHA-256, into ``animatezero/assets/toyworld/``.

Every stage is seeded and resumable: it saves its state every ``--save-every`` steps and at the end, and a rerun
continues where it stopped (a finished stage is skipped). ``--wandb`` logs to Weights & Biases (offline unless
``WANDB_MODE`` says otherwise).

    python scripts/train_toyworld.py                       # the recipe, from nothing: under 2 h on 2 cores
    python scripts/train_toyworld.py --steps-motion 6000   # a shorter motion stage (the directions only)
    python scripts/train_toyworld.py --stage unet          # up to one stage (the decoder may run beside the others)
    python scripts/train_toyworld.py --export-only         # write the shipped files from finished stages
    python scripts/train_toyworld.py --from-checkpoint CK.safetensors --motion-module MM.safetensors --detail
                                                           # the detail stage alone, for an existing pair of files
    python scripts/train_toyworld.py --from-checkpoint CK.safetensors --motion-init MM.safetensors --steps-motion 2000 \
        --lr-motion 2e-4                                   # continue a module on a checkpoint (the shipped files' last step)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import toyworld as tw  # noqa: E402
from evaluation.toyworld import EVAL_SEED_BASE, FRAMES, clip_times, render_batch, sample_scene  # noqa: E402
from models.clip_text import CLIPTextModel  # noqa: E402
from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig  # noqa: E402
from models.ddim import DDIMSchedule  # noqa: E402
from models.motion_module import MotionModules  # noqa: E402
from models.synthetic import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, save_state_dict  # noqa: E402
from models.tokenizer import EOS, CLIPTokenizer  # noqa: E402
from models.unet import UNetModel  # noqa: E402
from models.vae import LATENT_SCALE, AutoencoderKL  # noqa: E402

UNET = UNetConfig(model_channels=64, channel_mult=(1, 1, 1, 1), context_dim=32)
VAE = VAEConfig(ch=64, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
CLIP = CLIPTextConfig(width=32, layers=2, heads=1, mlp_dim=128)
MOTION = dataclasses.replace(MotionConfig.for_version(2, UNET.block_channels), layers_per_block=UNET.num_res_blocks)
ASSETS = ROOT / "animatezero" / "assets" / "toyworld"
CHECKPOINT_NAME = "toyworld_sd15.safetensors"
MOTION_NAME = "mm_toyworld_v2.safetensors"
STAGES = ("vae", "decoder", "text", "unet", "refine", "frame0", "motion", "detail")
DEFAULT_STEPS = {
    "vae": 3000,
    "decoder": 2500,
    "text": 400,
    "unet": 5000,
    "refine": 800,
    "frame0": 1000,
    "motion": 18000,  # on the frame0 UNet (see train_motion); the recipe's whole run fits in 2 hours on 2 cores
    "detail": 1200,
}
# frames, frames, captions, frames, frames, frames, clips, frames
DEFAULT_BATCH = {"vae": 8, "decoder": 4, "text": 64, "unet": 32, "refine": 32, "frame0": 32, "motion": 2, "detail": 32}
POOL_CLIPS = 800  # clips encoded once; the UNet and motion stages draw from their latents
DEFAULT_LR = {
    "vae": 5e-4,
    "decoder": 2e-4,
    "text": 1e-3,
    "unet": 5e-4,
    "refine": 1e-4,
    "frame0": 1e-4,
    "motion": 5e-4,
    "detail": 1e-4,
}
HIGH_NOISE_CAP = 10.0  # UNet loss weight: min(1 / alpha_bar_t, 10), see high_noise_loss
MOTION_NOISE_CAP = 100.0  # the motion stage's cap; 10 (the first shipped module's) gave no direction, see train_motion
CAPTION_DROPOUT = 0.1
PROBE_TEMPERATURE = 0.1
EMA_DECAY = 0.998
REFINE_EMA_DECAY = 0.99  # a short stage: its EMA must forget the unrefined start
REFINE_FIRST_FRAME = 0.5  # share of the refine stage's frames that are their clip's frame 0
DETAIL_T_MAX = 400  # the detail stage's timesteps are drawn uniformly below this (alpha_bar_t > 0.35), see train_detail


# ------------------------------------------------------------------------------------------------------ data
def frame_batch(rng: random.Random, n: int) -> tuple[list[str], Tensor, list[tuple[float, float]]]:
    """``n`` random single frames of random clips: captions, ``[n, 3, 64, 64]`` in [-1, 1], object centres (x, y)."""
    scenes = [sample_scene(rng.randrange(EVAL_SEED_BASE)) for _ in range(n)]
    ts = [rng.random() for _ in range(n)]
    frames = render_batch(scenes, ts)  # [n, 3, 64, 64]
    return [s.caption for s in scenes], frames * 2 - 1, [s.at(t)[:2] for s, t in zip(scenes, ts)]


def clip_batch(rng: random.Random, n: int) -> tuple[list[str], Tensor]:
    """``n`` random clips (captions, ``[n, 16, 3, 64, 64]`` in [-1, 1])."""
    scenes = [sample_scene(rng.randrange(EVAL_SEED_BASE)) for _ in range(n)]
    clips = render_batch([s for s in scenes for _ in range(FRAMES)], clip_times(FRAMES) * n)  # [n * f, 3, 64, 64]
    return [s.caption for s in scenes], clips.unflatten(0, (n, FRAMES)) * 2 - 1


# ------------------------------------------------------------------------------------------------- stage state
class Stage:
    """One resumable training stage: modules, optimizer, step counter and RNG, saved atomically to ``<out>/<name>.pt``."""

    def __init__(self, name: str, out: Path, modules: dict[str, nn.Module], params, lr: float, seed: int):
        self.name, self.path = name, out / f"{name}.pt"
        self.modules = modules
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.step, self.seconds = 0, 0.0
        self.runs: list[dict] = []  # one entry per (re)start: {"start", "planned", "threads", ...}, for the manifest
        self.schedule_start = 0  # the step the learning-rate schedule counts from (see run_stage's ``restart``)
        self.rng = random.Random(seed)
        torch.manual_seed(seed)
        if self.path.exists():
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            self.opt.load_state_dict(state["opt"])
            self.step, self.seconds = state["step"], state["seconds"]
            self.runs = state.get("runs", [])
            self.schedule_start = state.get("schedule_start", 0)
            self.rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            print(f"[{name}] resumed at step {self.step} ({self.seconds / 60:.1f} min so far)")

    def save(self) -> None:
        state = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "opt": self.opt.state_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "runs": self.runs,
            "schedule_start": self.schedule_start,
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def done_marker(self) -> Path:
        return self.path.with_suffix(".done")


def lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


class SplitBatch:
    """Run a step's batch as ``parts`` parts, each in a thread of its own with one intra-op thread, and add up their
    gradients in a fixed order. The toy networks' operations are too small for intra-op threads to pay: on the 2-core
    CPU a motion-stage step of 2 clips takes 302 ms with 2 intra-op threads and 252 ms as two one-clip parts
    (``python scripts/bench_train_toyworld.py``). Each part draws from its own ``random.Random`` and
    ``torch.Generator``, seeded from the stage's RNG, so a seed still fixes the run.

    ``loss_fn(rng, gen, n)`` returns ``(loss, extra)``: the mean loss over ``n`` samples drawn from ``rng`` and
    ``gen``. The step's loss is the parts' mean weighted by their sizes, and so are the gradients."""

    def __init__(self, loss_fn, batch: int, parts: int, params: list[Tensor]):
        from concurrent.futures import ThreadPoolExecutor

        self.loss_fn, self.batch, self.params = loss_fn, batch, params
        self.sizes = [batch // parts + (i < batch % parts) for i in range(min(parts, batch))]
        self.pool = ThreadPoolExecutor(len(self.sizes)) if len(self.sizes) > 1 else None
        self.parts = len(self.sizes) if self.pool is not None else 1  # what the manifest records

    def _part(self, seed_size: tuple[int, int]) -> tuple[Tensor, tuple[Tensor, ...]]:
        seed, n = seed_size
        loss, _ = self.loss_fn(random.Random(seed), torch.Generator().manual_seed(seed), n)
        loss = loss * (n / self.batch)
        return loss.detach(), torch.autograd.grad(loss, self.params)

    def __call__(self, rng: random.Random) -> tuple[Tensor, dict]:
        """One step's loss, with every parameter's ``.grad`` set."""
        if self.pool is None:
            loss, extra = self.loss_fn(rng, None, self.batch)
            loss.backward()
            return loss, extra
        seeds = [rng.randrange(2**62) for _ in self.sizes]
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // len(self.sizes)))
        try:
            parts = list(self.pool.map(self._part, zip(seeds, self.sizes)))
        finally:
            torch.set_num_threads(threads)
        for p, *grads in zip(self.params, *(g for _, g in parts)):
            p.grad = torch.stack(grads).sum(0)
        return torch.stack([loss for loss, _ in parts]).sum(), {}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def run_stage(
    stage: Stage,
    total: int,
    base_lr: float,
    loss_fn,
    save_every: int,
    log,
    ema=None,
    restart: bool = False,
    note=None,
    split: tuple[int, int] | None = None,
) -> None:
    """Train ``stage`` up to ``total`` steps with :func:`lr_at`'s schedule. The schedule spans the stage from step 0,
    so a finished stage continued to a larger ``total`` picks it up part-way; with ``restart`` such a continuation
    (and only a continuation: the stage's done marker says it finished at the current step) starts a schedule of its
    own instead, warm-up and cosine over the new steps. ``note``: extra fields for this run's manifest entry.

    ``loss_fn(rng)`` returns ``(loss, extra)``; with ``split = (batch, parts)`` it is ``loss_fn(rng, gen, n)`` instead,
    run by :class:`SplitBatch`."""
    from tqdm import tqdm

    for m in stage.modules.values():
        m.train()
    params = [p for g in stage.opt.param_groups for p in g["params"]]
    step_fn = SplitBatch(loss_fn, *split, params) if split else None
    marker = stage.done_marker()
    if restart and marker.exists() and json.loads(marker.read_text())["steps"] == stage.step < total:
        stage.schedule_start = stage.step
    if stage.step < total:  # a resumed stage's earlier runs stop where this one starts
        run = {"start": stage.step, "planned": total, "threads": torch.get_num_threads()}
        if step_fn is not None and step_fn.parts > 1:
            run["parts"] = step_fn.parts
        if stage.schedule_start or base_lr != DEFAULT_LR.get(stage.name, base_lr):
            run |= {"lr": base_lr, "schedule_start": stage.schedule_start}
        stage.runs.append(run | (note or {}))
    bar = tqdm(total=total, initial=stage.step, desc=stage.name, dynamic_ncols=True)
    while stage.step < total:
        t0 = time.perf_counter()
        for group in stage.opt.param_groups:
            group["lr"] = lr_at(stage.step - stage.schedule_start, total - stage.schedule_start, base_lr)
        stage.opt.zero_grad(set_to_none=True)
        if step_fn is not None:
            loss, extra = step_fn(stage.rng)
        else:
            loss, extra = loss_fn(stage.rng)
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        stage.opt.step()
        if ema is not None:
            ema.update()
        stage.step += 1
        stage.seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3g}" for k, v in extra.items()})
        if stage.step % 50 == 0 or stage.step == total:
            log(
                {
                    f"{stage.name}/loss": loss.item(),
                    f"{stage.name}/grad_norm": float(grad_norm),
                    **{f"{stage.name}/{k}": v for k, v in extra.items()},
                },
                step=stage.step,
            )
        if stage.step % save_every == 0 or stage.step == total:
            stage.save()
    bar.close()
    done = {"steps": stage.step, "minutes": stage.seconds / 60}
    if step_fn is not None:
        step_fn.close()
        if step_fn.parts > 1:
            done["parts"] = step_fn.parts
    if len(stage.runs) > 1:  # restarted or extended: say how (the learning-rate schedule spans each run's plan)
        done["runs"] = stage.runs
    stage.done_marker().write_text(json.dumps(done))


class EMA(nn.Module):
    """Exponential moving average of a module's parameters (the weights that are exported)."""

    def __init__(self, module: nn.Module, decay: float = EMA_DECAY):
        super().__init__()
        self.module, self.decay = module, decay
        self.shadow = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow.parameters(), self.module.parameters()):
            s.lerp_(p.detach(), 1 - self.decay)

    def state_dict(self, *args, **kwargs):
        return self.shadow.state_dict(*args, **kwargs)

    def load_state_dict(self, sd, *args, **kwargs):
        return self.shadow.load_state_dict(sd, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------ stages
def train_vae(out: Path, args, log) -> AutoencoderKL:
    vae = AutoencoderKL(VAE)
    stage = Stage("vae", out, {"vae": vae}, vae.parameters(), DEFAULT_LR["vae"], args.seed)

    def loss_fn(rng):
        _, frames, centres = frame_batch(rng, args.batch_vae)  # [b, 3, 64, 64]
        # Convolutions are shift-equivariant, so train on crops (cheaper), aligned to the latent grid and always
        # holding the object: a crop of plain background cannot be encoded, because the encoder's last GroupNorm
        # (one channel per group at this width) erases whatever is constant over the crop.
        c = args.vae_crop
        crops = []
        for frame, (cx, cy) in zip(frames, centres):
            i = min(max(int(cy) - rng.randrange(8, c - 8), 0), 64 - c) // 8 * 8
            j = min(max(int(cx) - rng.randrange(8, c - 8), 0), 64 - c) // 8 * 8
            crops.append(frame[:, i : i + c, j : j + c])
        x = torch.stack(crops)  # [b, 3, c, c]
        mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)  # [b, 4, 8, 8] each
        z = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn_like(mean)
        rec = vae.decoder(vae.post_quant_conv(z))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        l1, mse = (rec - x).abs().mean(), (rec - x).pow(2).mean()
        psnr = 10 * math.log10(4 / max(mse.item(), 1e-10))
        return l1 + mse + 1e-4 * kl, {"psnr": psnr, "kl": kl.item()}

    if not stage.done_marker().exists():
        run_stage(stage, args.steps_vae, DEFAULT_LR["vae"], loss_fn, args.save_every, log)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def normalize_latents(vae: AutoencoderKL, n: int = 512) -> float:
    """Rescale the latent space exactly (quant_conv's mean rows x s, post_quant_conv's input columns / s, logvar + 2
    log s) so that ``LATENT_SCALE * mean`` has unit standard deviation, as SD's pipelines assume. Returns s."""
    rng = random.Random(1234)
    _, x, _ = frame_batch(rng, n)
    mean = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)[0]
    s = 1.0 / (LATENT_SCALE * mean.std().item())
    rescale_latents(vae, s)
    return s


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, s: float) -> None:
    """Multiply the latent space by ``s`` exactly: quant_conv's mean rows x s, its logvar rows + 2 log s,
    post_quant_conv's input columns / s (decoding is unchanged)."""
    z = VAE.z_channels
    vae.quant_conv.weight[:z] *= s
    vae.quant_conv.bias[:z] *= s
    vae.quant_conv.bias[z:] += 2 * math.log(s)
    vae.post_quant_conv.weight /= s


@torch.no_grad()
def latent_pool(out: Path, vae: AutoencoderKL, n_clips: int, seed: int, chunk: int = 25) -> tuple[list[str], Tensor]:
    """Encode ``n_clips`` random clips once (the VAE is the costly part on a CPU): captions and latents
    ``[n, 4, 16, 8, 8]``. Built in chunks and saved after each, so an interrupted build resumes."""
    from tqdm import tqdm

    path = out / "latents.pt"
    state = torch.load(path, weights_only=False) if path.exists() else {"captions": [], "latents": []}
    rng = random.Random(seed + 10)
    bar = tqdm(total=n_clips, initial=len(state["captions"]), desc="latents", dynamic_ncols=True)
    while len(state["captions"]) < n_clips:
        t0 = time.perf_counter()
        rng.seed(seed * 1_000_003 + len(state["captions"]))
        caps, clips = clip_batch(rng, min(chunk, n_clips - len(state["captions"])))  # [b, f, 3, 64, 64]
        b, f = clips.shape[:2]
        z = vae.encode(clips.flatten(0, 1)).unflatten(0, (b, f)).transpose(1, 2)  # [b, 4, f, 8, 8]
        state["captions"] += caps
        state["latents"].append(z.clone())
        state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - t0
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        bar.update(b)
    bar.close()
    record = {"clips": len(state["captions"]), "minutes": state.get("seconds", float("nan")) / 60}
    (out / "latents.done").write_text(json.dumps(record))  # for the manifest, as the stages' done markers
    return state["captions"], torch.cat(state["latents"])


def train_decoder(out: Path, args, log, vae: AutoencoderKL) -> AutoencoderKL:
    """Fine-tune the decoder (and ``post_quant_conv``) on whole frames with the encoder frozen, as SD's ft-MSE VAE
    was: the latent space does not move, so the UNet and motion stages (trained on the encoder's latents) stay valid
    and may run at the same time. Takes the latent-normalised VAE; saves the normalised decoder."""
    modules = {"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv}
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    stage = Stage("decoder", out, modules, params, DEFAULT_LR["decoder"], args.seed + 3)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)

    def loss_fn(rng):
        _, x, _ = frame_batch(rng, args.batch_decoder)  # [b, 3, 64, 64]
        with torch.no_grad():
            z = vae.encode(x)  # [b, 4, 8, 8]
        rec = vae.decode(z)
        mse = (rec - x).pow(2).mean()
        return (rec - x).abs().mean() + mse, {"psnr": 10 * math.log10(4 / max(mse.item(), 1e-10))}

    if not stage.done_marker().exists():
        run_stage(stage, args.steps_decoder, DEFAULT_LR["decoder"], loss_fn, args.save_every, log)
    return vae.eval().requires_grad_(False)


def noisy(
    x0: Tensor, alphas: Tensor, high: bool = False, gen: torch.Generator | None = None, t_max: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, t, eps) for the training timesteps of ``x0 [b, ...]``: uniform below ``t_max`` (default T), or with
    ``high`` drawn as ``T (1 - u^2)`` (density rising towards t = T, where the prompt decides the picture). ``gen``:
    the generator to draw from (torch's global one if None)."""
    b = x0.shape[0]
    n = alphas.numel()
    if high:
        t = (n * (1 - torch.rand(b, generator=gen) ** 2)).long().clamp(0, n - 1)
    else:
        t = torch.randint(0, t_max or n, (b,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    a = alphas[t].view(b, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps


def high_noise_loss(pred: Tensor, eps: Tensor, t: Tensor, alphas: Tensor, cap: float = HIGH_NOISE_CAP) -> Tensor:
    """eps-prediction MSE weighted by ``min(1 / alpha_bar_t, cap)`` (normalised by the weights' sum).

    With eps prediction, what the prompt decides (background, color, shape, direction) is settled at high noise,
    where an error in x_0 reaches the eps loss only scaled by ``alpha_bar_t / (1 - alpha_bar_t)`` (below 0.01 near
    t = T): the plain loss gives the text almost no gradient, and a model trained on it draws random objects
    whatever the prompt (measured: the first shipped model's cond/uncond predictions differed by 0.5 %). ``1/alpha``
    is the v-prediction loss written for an eps model; the cap keeps the low-noise end (detail) in the mix. The
    network, its output and the sampler stay SD1.5's."""
    w = (1 / alphas[t]).clamp(max=cap)  # [b]
    err = (pred - eps).pow(2).flatten(1).mean(dim=1)  # [b]
    return (w * err).sum() / w.sum()


class CaptionProbe(nn.Module):
    """The text encoder's pre-training objective (stage ``text``): classify each of the caption's four attributes
    from the mean of its end-of-text/padding tokens (the last hidden states the UNet reads), by cosine similarity to
    one learned prototype per class at a fixed temperature, so only an angular separation of the tokens lowers it,
    not a rescaled head. Its prototypes are training state; they are not exported.

    SD freezes a CLIP text encoder that contrastive pre-training taught to tell captions apart; this is that step for
    the toy world, with the caption's known attributes standing in for the paired image. Trained jointly with the
    UNet from scratch instead (the recipe before this one), the encoder let the words a single frame does not need
    collapse: captions differing only in the motion word came out 0.4 % apart, in the shape word 1 % (README "Toy
    world")."""

    ATTRIBUTES = {
        "color": tuple(tw.COLORS),
        "shape": tw.SHAPES,
        "motion": tw.MOTIONS,
        "background": tuple(tw.BACKGROUNDS),
    }

    def __init__(self, width: int):
        super().__init__()
        self.prototypes = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(len(names), width)) for k, names in self.ATTRIBUTES.items()}
        )

    def forward(self, hidden: Tensor, ids: Tensor, captions: list[str]) -> Tensor:
        """Mean cross-entropy over the attributes of the captions in the grammar (0 if none is)."""
        attrs = [tw.parse_caption(c) for c in captions]
        keep = [i for i, a in enumerate(attrs) if a is not None]
        if not keep:
            return hidden.sum() * 0
        pad = (ids[keep] == EOS).to(hidden.dtype).unsqueeze(-1)  # [n, 77, 1]
        pooled = F.normalize((hidden[keep] * pad).sum(1) / pad.sum(1), dim=-1)  # [n, d]
        losses = []
        for name, classes in self.ATTRIBUTES.items():
            logits = pooled @ F.normalize(self.prototypes[name], dim=-1).T / PROBE_TEMPERATURE  # [n, classes]
            target = torch.tensor([classes.index(attrs[i][name]) for i in keep])
            losses.append(F.cross_entropy(logits, target))
        return torch.stack(losses).mean()


def drop_captions(rng: random.Random, caps: list[str]) -> list[str]:
    return ["" if rng.random() < CAPTION_DROPOUT else c for c in caps]


@torch.no_grad()
def caption_context(rng: random.Random, text: CLIPTextModel, tok: CLIPTokenizer, caps: list[str]) -> Tensor:
    """The frozen text encoder's last hidden states ``[b, 77, 32]`` for ``caps``, 10 % of them emptied (for
    classifier-free guidance)."""
    return text(tok(drop_captions(rng, caps)))


def train_text(out: Path, args, log, tok: CLIPTokenizer) -> CLIPTextModel:
    """Stage ``text``: pre-train the CLIP text encoder on the world's captions with :class:`CaptionProbe`, then
    freeze it (as SD freezes CLIP). CLIP's initialisation: token embeddings N(0, 0.02), positions N(0, 0.01)."""
    text, probe = CLIPTextModel(CLIP), CaptionProbe(CLIP.width)
    nn.init.normal_(text.text_model.embeddings.token_embedding.weight, std=0.02)
    nn.init.normal_(text.text_model.embeddings.position_embedding.weight, std=0.01)
    params = [*text.parameters(), *probe.parameters()]
    stage = Stage("text", out, {"text": text, "probe": probe}, params, DEFAULT_LR["text"], args.seed + 5)

    def loss_fn(rng):
        caps = [sample_scene(rng.randrange(EVAL_SEED_BASE)).caption for _ in range(args.batch_text)]
        ids = tok(caps)  # [b, 77]
        return probe(text(ids), ids, caps), {}

    if not stage.done_marker().exists():
        run_stage(stage, args.steps_text, DEFAULT_LR["text"], loss_fn, args.save_every, log)
    return text.eval().requires_grad_(False)


def frame_loss(
    rng, gen, unet, text, tok, pool, alphas: Tensor, batch: int, first_frame: float = 0.0, t_max: int | None = None
) -> Tensor:
    """The text-to-image loss of the ``unet``, ``refine``, ``frame0`` and ``detail`` stages on one frame of each of
    ``batch`` clips drawn from the latent pool, that frame being frame 0 with probability ``first_frame`` and a
    uniformly drawn frame otherwise (with ``first_frame`` 0 the draws are the ``unet`` stage's as they always were):
    :func:`high_noise_loss` on high-noise-biased timesteps, or with ``t_max`` the plain eps MSE on timesteps drawn
    uniformly below it (:func:`train_detail`)."""
    captions, latents = pool
    idx = [rng.randrange(len(captions)) for _ in range(batch)]
    first = [rng.random() < first_frame for _ in idx] if first_frame else [False] * batch
    frames = torch.tensor([0 if f else rng.randrange(latents.shape[2]) for f in first])
    z0 = latents[torch.tensor(idx), :, frames]  # [b, 4, 8, 8]: one frame of each drawn clip
    zt, t, eps = noisy(z0, alphas, high=t_max is None, gen=gen, t_max=t_max)
    ctx = caption_context(rng, text, tok, [captions[i] for i in idx])  # [b, 77, 32]
    pred = unet(zt, t, ctx)
    return high_noise_loss(pred, eps, t, alphas) if t_max is None else F.mse_loss(pred, eps)


def train_unet(out: Path, args, log, pool, tok: CLIPTokenizer, text: CLIPTextModel) -> UNetModel:
    """Stage ``unet``: a fresh UNet on single frames of the pool (text-to-image: one random frame of each drawn
    clip, 10 % empty captions, EMA weights), conditioned by the frozen text encoder, trained with
    :func:`high_noise_loss` on high-noise-biased timesteps. Returns the EMA weights."""
    unet = UNetModel(UNET)
    ema = EMA(unet)
    stage = Stage("unet", out, {"unet": unet, "ema_unet": ema}, unet.parameters(), DEFAULT_LR["unet"], args.seed + 1)
    alphas = DDIMSchedule().alphas_cumprod

    def loss_fn(rng, gen, n):
        return frame_loss(rng, gen, unet, text, tok, pool, alphas, n), {}

    if not stage.done_marker().exists():
        split = (args.batch_unet, args.split)
        run_stage(stage, args.steps_unet, DEFAULT_LR["unet"], loss_fn, args.save_every, log, ema=ema, split=split)
    return ema.shadow.eval().requires_grad_(False)


def _continue_unet(
    name: str, out: Path, args, log, pool, tok, text, unet: UNetModel, first_frame: float, seed: int, t_max=None
):
    """Continue ``unet`` (an earlier stage's EMA weights) as stage ``name`` with the text-to-image loss
    (:func:`frame_loss`; ``first_frame`` and ``t_max`` are its), and return the EMA weights (decay
    :data:`REFINE_EMA_DECAY`)."""
    unet = copy.deepcopy(unet).requires_grad_(True)
    ema = EMA(unet, REFINE_EMA_DECAY)
    stage = Stage(name, out, {"unet": unet, "ema_unet": ema}, unet.parameters(), DEFAULT_LR[name], seed)
    alphas = DDIMSchedule().alphas_cumprod
    batch, steps = getattr(args, f"batch_{name}"), getattr(args, f"steps_{name}")

    def loss_fn(rng, gen, n):
        return frame_loss(rng, gen, unet, text, tok, pool, alphas, n, first_frame, t_max), {}

    if not stage.done_marker().exists():
        run_stage(stage, steps, DEFAULT_LR[name], loss_fn, args.save_every, log, ema=ema, split=(batch, args.split))
    return ema.shadow.eval().requires_grad_(False)


def train_refine(out: Path, args, log, pool, tok: CLIPTokenizer, text: CLIPTextModel, unet: UNetModel) -> UNetModel:
    """Stage ``refine``: continue the ``unet`` stage's EMA weights at a low learning rate with the same loss, half of
    the frames being their clip's frame 0 (the frame AnimateZero's step 1 draws: a generated image becomes frame 0 of
    the clip, and frame 0 is where a clip's motion starts). On 32 held-out prompts at guidance 5 (README "Toy
    world"), text-to-image color accuracy went from 0.88 after ``unet`` to 0.94 after this stage, shape from 0.75 to
    0.78. Returns the EMA weights (decay :data:`REFINE_EMA_DECAY`)."""
    return _continue_unet("refine", out, args, log, pool, tok, text, unet, REFINE_FIRST_FRAME, args.seed + 6)


def train_frame0(out: Path, args, log, pool, tok: CLIPTokenizer, text: CLIPTextModel, unet: UNetModel) -> UNetModel:
    """Stage ``frame0``: continue the ``refine`` stage's UNet on its clips' frame 0 only, so that the spatial UNet
    keeps the way a caption's motion goes, which the motion module can learn from nowhere else.

    Every motion of the world is its opposite played backwards (moving right is moving left reversed, growing is
    shrinking reversed), and a frame drawn from any time of a clip shows the motion's axis (a horizontal mover's
    positions spread less across than down) but not its sign. A UNet trained on such frames has no use for the sign:
    in the model before this stage, changing ``moving right`` to ``moving left`` changed the motion modules' inputs by
    0.24 of their norm, ``moving up`` by 0.49, and its step-1 images put right- and left-moving objects at about the
    same mean x (29 and 33 px). Its motion module, through 36,000 steps, learned the axis and not the sign: of 32
    held-out left/right text-to-video clips 15 went the captioned way and 16 the opposite one
    (``scripts/toyworld_direction.py sign``). Frame 0 does show the sign: a right-moving object starts left of centre.
    After 1,000 steps of this stage the same word change moves the inputs by 0.53 (``moving up``: 0.82), step-1
    images put the two objects at 19 and 45 px, where the world's frame 0 has them (20 and 44), and that motion
    module continued for 8,000 steps on the new UNet sends 27 of those 32 clips the captioned way (README "Toy
    world"). Frame 0 is also what AnimateZero's step 1 draws."""
    return _continue_unet("frame0", out, args, log, pool, tok, text, unet, 1.0, args.seed + 7)


def fresh_motion_module() -> MotionModules:
    """A new v2 motion module at the toy world's widths, ``proj_out`` zeroed as in AnimateDiff (so that training
    starts at the identity)."""
    motion = MotionModules(MOTION)
    for name, p in motion.named_parameters():
        if "proj_out" in name:
            nn.init.zeros_(p)
    return motion


def train_motion(
    out: Path,
    args,
    log,
    pool,
    tok: CLIPTokenizer,
    unet: UNetModel,
    text: CLIPTextModel,
    note: dict | None = None,
    init: MotionModules | None = None,
) -> MotionModules:
    """Stage ``motion``: an AnimateDiff v2 motion module on 16-frame clips, the spatial UNet and the text encoder
    frozen, with :func:`high_noise_loss` capped at :data:`MOTION_NOISE_CAP`.

    Where a clip's object goes is decided early in sampling, above t = 700 (alpha_bar < 0.035). A cap of 10 gives an
    x_0 error there a weight of 0.37 or less (0.05 at t = 900, against 1.2 at t = 500); the cap of 100 weighs x_0
    errors about equally from t = 500 to 800. The direction in the caption is learned slowly (the module first
    learns to smooth the track it sees), and on a UNet that was not through :func:`train_frame0` it learned each
    motion's axis but not its sign (docs/toyworld.md §5-6). On the frame0 UNet the directions come by 6,000 steps and
    growing and shrinking last, so the default is 18,000 steps (measured side by side with 6,000 and 12,000 in
    docs/toyworld.md §2).

    ``init``: start from this module instead of a fresh one (a module trained on another UNet, continued on this
    one, as a motion module is adapted to a fine-tuned SD1.5 checkpoint)."""
    motion = fresh_motion_module() if init is None else init.train().requires_grad_(True)
    ema = EMA(motion)
    modules = {"motion": motion, "ema": ema}
    lr = args.lr_motion or DEFAULT_LR["motion"]
    stage = Stage("motion", out, modules, motion.parameters(), lr, args.seed + 2)
    alphas = DDIMSchedule().alphas_cumprod
    unet.requires_grad_(False)

    def loss_fn(rng, gen, n):
        captions, latents = pool
        idx = [rng.randrange(len(captions)) for _ in range(n)]
        z0 = latents[torch.tensor(idx)]  # [n, 4, f, 8, 8]
        ctx = caption_context(rng, text, tok, [captions[i] for i in idx])  # [n, 77, 32]
        zt, t, eps = noisy(z0, alphas, high=True, gen=gen)
        return high_noise_loss(unet(zt, t, ctx, motion=motion), eps, t, alphas, MOTION_NOISE_CAP), {}

    # a finished stage asked for more steps continues (the module shipped before was made so, 6,000 at a time); the
    # cosine schedule then spans the new length, or with --restart-schedule the new steps alone: each run is recorded
    # in the manifest
    if not stage.done_marker().exists() or stage.step < args.steps_motion:
        split = (args.batch_motion, args.split)
        run_stage(stage, args.steps_motion, lr, loss_fn, args.save_every, log, ema, args.restart_schedule, note, split)
    return ema.shadow.eval().requires_grad_(False)


def train_detail(out: Path, args, log, pool, tok: CLIPTokenizer, text: CLIPTextModel, unet: UNetModel) -> UNetModel:
    """Stage ``detail``: continue the ``frame0`` stage's UNet (the one the motion module was trained on) with the
    plain eps loss on timesteps drawn uniformly below :data:`DETAIL_T_MAX`, on uniformly drawn frames, the motion
    module frozen and unused. This is how an SD1.5 checkpoint is fine-tuned after a motion module exists (a
    community checkpoint run with AnimateDiff's modules): the exported checkpoint carries this UNet, the exported
    module is the one trained on the ``frame0`` UNet.

    The high-noise loss of the earlier stages (:func:`high_noise_loss` on timesteps drawn as T(1 - u^2)) gives the
    timesteps below 400, where an object's corners are drawn, a few percent of the loss, and the UNet draws a
    square's corners round: without this stage 26 of the 33 squares of the 96 held-out pairs read as circles
    (docs/toyworld.md §8). Low noise does not decide the layout, so the motion module's directions are kept; its
    growing and shrinking under the paper preset are not all kept; the shipped module was continued on this UNet
    for that (``--from-checkpoint --motion-init``, docs/toyworld.md §2 and §8). Returns the EMA weights (decay
    :data:`REFINE_EMA_DECAY`)."""
    return _continue_unet("detail", out, args, log, pool, tok, text, unet, 0.0, args.seed + 8, DETAIL_T_MAX)


# ------------------------------------------------------------------------------------------------------ export
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """A file named in the manifest: its name and SHA-256."""
    return {"path": path.name, "sha256": sha256(path)}


def done_record(out: Path, name: str) -> dict:
    """What a finished stage (or the latent pool, ``latents``) wrote to its done marker in ``out``."""
    return json.loads((out / f"{name}.done").read_text())


def provenance(command: str, **fields) -> dict:
    """The manifest's record of one training command: the command, ``fields``, and where it ran."""
    return {
        "trained_by": command,
        **fields,
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def export(dest: Path, vae: AutoencoderKL, unet: UNetModel, text: CLIPTextModel, motion: MotionModules, meta: dict):
    """Write the shipped files (fp16 safetensors in the original layouts) and a manifest with their SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    half = {}
    half.update({UNET_PREFIX + k: v.half() for k, v in unet.state_dict().items()})
    half.update({VAE_PREFIX + k: v.half() for k, v in vae.state_dict().items()})
    prefix = CLIP_PREFIX.removesuffix("text_model.")
    half.update({prefix + k: v.half() for k, v in text.state_dict().items()})
    save_state_dict(half, dest / CHECKPOINT_NAME)
    save_state_dict({k: v.half() for k, v in motion.state_dict().items()}, dest / MOTION_NAME)
    manifest = {
        "files": {
            n: {"sha256": sha256(dest / n), "bytes": (dest / n).stat().st_size} for n in (CHECKPOINT_NAME, MOTION_NAME)
        },
        **meta,
    }
    tmp = dest / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, dest / "manifest.json")
    print(json.dumps(manifest["files"], indent=2))


def motion_for_checkpoint(args, log, tok: CLIPTokenizer, command: str) -> int:
    """``--from-checkpoint``: train only the ``motion`` stage, on the VAE, text encoder and UNet of an existing LDM
    single file (AnimateDiff's own workflow: a motion module for a given SD1.5 checkpoint, read by the ordinary
    loader), then export that checkpoint's weights with the new module. For retraining the motion module when the
    earlier stages' training states are gone (they live in ``--out``, which is not shipped). fp16 -> fp32 -> fp16
    is exact, so the exported checkpoint has the bytes of the one read; the latent pool is encoded with its VAE.
    With ``--frame0`` the checkpoint's UNet first goes through the ``frame0`` stage (:func:`train_frame0`), and the
    exported checkpoint carries the continued UNet. A motion state already in ``--out`` (trained on another UNet)
    is continued, not restarted; each run's manifest entry names the UNet it trained on (``unet``: the first 12
    hex digits of the base checkpoint's SHA-256, ``+ frame0`` when continued).

    ``--motion-module`` takes that module as it is instead of training one (recorded as ``motion_module`` with its
    SHA-256; exported byte for byte); ``--motion-init`` starts the motion stage from that module instead of a fresh
    one (recorded as ``motion_init``): the shipped module is the recipe's, continued so on the ``detail`` UNet it
    runs with (docs/toyworld.md §8). ``--detail`` runs the ``detail`` stage (:func:`train_detail`) on the UNet
    after the motion module: with both, the recipe's last stage for a checkpoint and module whose training states
    are gone."""
    from models.loading import load_motion_module, load_sd15

    unet, vae, text = load_sd15(args.from_checkpoint)
    base = file_record(args.from_checkpoint)
    beside = args.from_checkpoint.with_name("manifest.json")  # a shipped checkpoint's provenance, when it is there
    if beside.is_file():
        known = json.loads(beside.read_text())
        if known.get("files", {}).get(base["path"], {}).get("sha256") == base["sha256"]:
            # a checkpoint exported by an earlier --from-checkpoint run carries its own base's provenance on
            origin = known.get("base_checkpoint", {})
            known = origin if origin.get("sha256") == base["sha256"] else known
            # and one exported by a --frame0 run (a new checkpoint) keeps that run's own base: the chain back to the
            # stages that trained its VAE, text encoder and first UNet
            base |= {k: known[k] for k in ("trained_by", "stages", "latent_pool", "base_checkpoint") if k in known}
    pool = latent_pool(args.out, vae, args.pool_clips, args.seed)
    stages, note, extra = {}, {"unet": base["sha256"][:12]}, {}
    if args.frame0:  # a new UNet: the exported checkpoint then differs from the one read in its UNet weights
        unet = train_frame0(args.out, args, log, pool, tok, text, unet)
        stages["frame0"] = done_record(args.out, "frame0")
        note["unet"] += " + frame0"
    if args.motion_module is not None:
        motion = load_motion_module(args.motion_module, dtype=torch.float32)
        extra["motion_module"] = file_record(args.motion_module)
    else:
        init = None
        if args.motion_init is not None:
            init = load_motion_module(args.motion_init, dtype=torch.float32)
            extra["motion_init"] = file_record(args.motion_init)
        motion = train_motion(args.out, args, log, pool, tok, unet, text, note, init)
        stages["motion"] = done_record(args.out, "motion")
    if args.detail:
        unet = train_detail(args.out, args, log, pool, tok, text, unet)
        stages["detail"] = done_record(args.out, "detail")
    # the latent pool was encoded with this checkpoint's VAE
    meta = provenance(
        command, base_checkpoint=base, **extra, stages=stages, latent_pool=done_record(args.out, "latents")
    )
    export(args.dest, vae, unet, text, motion, meta)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "toyworld_train", help="training state folder")
    ap.add_argument("--dest", type=Path, default=ASSETS, help="where the shipped files are written")
    ap.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    ap.add_argument("--export-only", action="store_true", help="only write the shipped files from finished stages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument(
        "--split",
        type=int,
        default=0,
        help="run the UNet and motion stages' batches as this many parts in threads of their own (see SplitBatch; "
        "0: one part per thread, 1: no split)",
    )
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--vae-crop", type=int, default=32, help="VAE training crop size (a multiple of 8)")
    ap.add_argument("--pool-clips", type=int, default=POOL_CLIPS, help="clips encoded once for the UNet/motion stages")
    ap.add_argument(
        "--from-checkpoint",
        type=Path,
        help="train only the motion stage, on this LDM single file's VAE, text encoder and UNet (see motion_for_checkpoint)",
    )
    ap.add_argument(
        "--frame0",
        action="store_true",
        help="with --from-checkpoint: first continue the checkpoint's UNet with the frame0 stage (a new checkpoint)",
    )
    ap.add_argument(
        "--motion-module",
        type=Path,
        help="with --from-checkpoint: use this motion module as it is instead of training one (with --detail)",
    )
    ap.add_argument(
        "--motion-init",
        type=Path,
        help="with --from-checkpoint: start the motion stage from this motion module instead of a fresh one "
        "(give --steps-motion and --lr-motion for the continuation)",
    )
    ap.add_argument(
        "--detail",
        action="store_true",
        help="with --from-checkpoint: continue the checkpoint's UNet with the detail stage after the motion module",
    )
    ap.add_argument("--lr-motion", type=float, default=0.0, help="the motion stage's peak learning rate (0: default)")
    ap.add_argument(
        "--restart-schedule",
        action="store_true",
        help="a finished motion stage continued to more steps gets a learning-rate schedule of its own",
    )
    ap.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline unless WANDB_MODE is set)")
    for s in STAGES:
        ap.add_argument(f"--steps-{s}", type=int, default=DEFAULT_STEPS[s])
        ap.add_argument(f"--batch-{s}", type=int, default=DEFAULT_BATCH[s])
    args = ap.parse_args(argv)
    if args.motion_module is not None and args.motion_init is not None:
        ap.error("--motion-module (use a module as it is) and --motion-init (train from it) exclude each other")
    if args.from_checkpoint is None and (args.motion_module is not None or args.motion_init is not None or args.detail):
        ap.error(
            "--motion-module, --motion-init and --detail go with --from-checkpoint "
            "(the recipe from nothing runs detail itself)"
        )
    if args.from_checkpoint is not None and args.stage not in ("all", "motion"):
        ap.error("--from-checkpoint runs the motion stage (frame0 with --frame0, detail with --detail); drop --stage")
    # every stage builds its modules before its Stage seeds torch, and torch's generator starts from a random seed:
    # seed it here, so that a seed fixes the initialisations too (a resumed stage restores the generator's state)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.split = args.split or torch.get_num_threads()
    args.out.mkdir(parents=True, exist_ok=True)

    run = None
    if args.wandb:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        run = wandb.init(
            project="animatezero-toyworld", config=vars(args) | {"dest": str(args.dest), "out": str(args.out)}
        )

    def log(values: dict, step: int) -> None:
        if run is not None:
            run.log(values)

    tok = CLIPTokenizer()
    command = "scripts/train_toyworld.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_checkpoint is not None:
        return motion_for_checkpoint(args, log, tok, command)
    wanted = STAGES if args.stage == "all" else STAGES[: STAGES.index(args.stage) + 1]
    vae = train_vae(args.out, args, log)
    scale_file = args.out / "vae_scale.json"
    if not scale_file.exists():
        scale_file.write_text(json.dumps({"scale": normalize_latents(vae)}))
    else:  # the saved VAE state is the unnormalised one; reapply the same exact rescaling
        rescale_latents(vae, json.loads(scale_file.read_text())["scale"])
    if args.stage == "decoder":  # may run beside the UNet/motion stages: the latents do not depend on it
        train_decoder(args.out, args, log, vae)
        return 0
    if "text" not in wanted:
        return 0
    text = train_text(args.out, args, log, tok)
    if "unet" not in wanted:
        return 0
    pool = latent_pool(args.out, vae, args.pool_clips, args.seed)
    unet = train_unet(args.out, args, log, pool, tok, text)
    if args.stage == "unet":
        return 0
    unet = train_refine(args.out, args, log, pool, tok, text, unet)
    if args.stage == "refine":
        return 0
    unet = train_frame0(args.out, args, log, pool, tok, text, unet)
    if args.stage == "frame0":
        return 0
    motion = train_motion(args.out, args, log, pool, tok, unet, text)
    if "detail" in wanted:
        unet = train_detail(args.out, args, log, pool, tok, text, unet)
    vae = train_decoder(args.out, args, log, vae)
    if all((args.out / f"{s}.done").exists() for s in STAGES) or args.export_only:
        stages = {s: done_record(args.out, s) for s in STAGES}
        meta = provenance(command, stages=stages, latent_pool=done_record(args.out, "latents"))
        export(args.dest, vae, unet, text, motion, meta)
    if run is not None:
        run.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
