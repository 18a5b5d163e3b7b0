"""The stages, in the recipe's order (see :mod:`experiments.train_toyworld`): each builds its modules, trains them as a
resumable :class:`~experiments.train_toyworld.loop.Stage` (skipped once done) and returns the weights it exports."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from evaluation.toyworld import EVAL_SEED_BASE, sample_scene
from experiments.train_toyworld.loop import EMA, Stage, run_stage
from experiments.train_toyworld.losses import CaptionProbe, caption_context, frame_loss, high_noise_loss, noisy
from experiments.train_toyworld.recipe import (
    CLIP,
    DEFAULT_LR,
    DETAIL_T_MAX,
    MOTION,
    MOTION_NOISE_CAP,
    REFINE_EMA_DECAY,
    REFINE_FIRST_FRAME,
    UNET,
    VAE,
    clip_batch,
    frame_batch,
)
from models.clip_text import CLIPTextModel
from models.ddim import DDIMSchedule
from models.motion_module import MotionModules
from models.tokenizer import CLIPTokenizer
from models.unet import UNetModel
from models.vae import LATENT_SCALE, AutoencoderKL


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
    the clip, and frame 0 is where a clip's motion starts). On 32 held-out prompts at guidance 5 (docs/toyworld.md),
    text-to-image color accuracy went from 0.88 after ``unet`` to 0.94 after this stage, shape from 0.75 to
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
    (docs/toyworld.md §6). Frame 0 does show the sign: a right-moving object starts left of centre.
    After 1,000 steps of this stage the same word change moves the inputs by 0.53 (``moving up``: 0.82), step-1
    images put the two objects at 19 and 45 px, where the world's frame 0 has them (20 and 44), and that motion
    module continued for 8,000 steps on the new UNet sends 27 of those 32 clips the captioned way (docs/toyworld.md).
    Frame 0 is also what AnimateZero's step 1 draws."""
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


