"""Synthetic checkpoints with the real SD1.5 / AnimateDiff keys and shapes, for tests and tools.

The layouts are written from the key rules in docs/checkpoints.md §3 (the original ``ldm`` and
AnimateDiff naming), **not** derived from the modules in ``models/``: they are the independent spec our modules are
tested against. A layout is an ordered ``{key: shape}`` dict; :func:`random_state_dict` fills it deterministically
(each key's values depend only on ``seed`` and the key, so a layout and its sub-layouts agree) and
:func:`save_state_dict` writes ``.safetensors`` or a torch pickle (``.ckpt``/``.pt``/``.pth``) atomically.

Full-size layouts (SD1.5 defaults): UNet 686 tensors / 859,520,964 params, VAE 248 / 83,653,863, CLIP 196 (+1
``position_ids``) / 123,060,480; motion v1/v3 560 tensors, v2 588 (417,137,600 / 453,209,280 params without ``pe``);
MotionLoRA r=64 on the v2 tree 336 / 19,333,120.

SD1.5 LoRAs (:func:`lora_layout`, :func:`write_lora`) are written in the real layouts read by ``models/lora.py``
(kohya, peft, older diffusers, AnimateDiff's v3 adapter, and an SDXL kohya file for refusals; docs/lora.md §2).
"""

from __future__ import annotations

import math
import os
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.attention import sinusoidal_positions
from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig

Shape = tuple[int, ...]
Layout = dict[str, Shape]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# DDPM.register_schedule buffers of a CompVis training file (SD "linear" = scaled_linear betas), all [timesteps] f32.
DDPM_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
DDPM_TIMESTEPS = 1000
EMA_SCALARS = ("model_ema.decay", "model_ema.num_updates")

# Default architectures (the real SD1.5 / motion v2 widths), as module-level values for the signature defaults.
SD15_UNET = UNetConfig()
SD15_VAE = VAEConfig()
SD15_CLIP = CLIPTextConfig()
MOTION_V2 = MotionConfig()


def _norm(out: Layout, p: str, c: int) -> None:
    out[p + "weight"] = (c,)
    out[p + "bias"] = (c,)


def _lin(out: Layout, p: str, cout: int, cin: int, bias: bool = True) -> None:
    out[p + "weight"] = (cout, cin)
    if bias:
        out[p + "bias"] = (cout,)


def _conv(out: Layout, p: str, cout: int, cin: int, k: int) -> None:
    out[p + "weight"] = (cout, cin, k, k)
    out[p + "bias"] = (cout,)


# --------------------------------------------------------------------------------------------------- SD1.5 UNet
def unet_layout(cfg: UNetConfig = SD15_UNET, prefix: str = UNET_PREFIX) -> Layout:
    """``model.diffusion_model.*`` keys of the CompVis ``UNetModel`` (docs/checkpoints.md §1.3, §3)."""
    out: Layout = {}
    temb = cfg.model_channels * 4
    ctx = cfg.context_dim

    def res(p: str, cin: int, c: int) -> None:
        _norm(out, p + "in_layers.0.", cin)
        _conv(out, p + "in_layers.2.", c, cin, 3)
        _lin(out, p + "emb_layers.1.", c, temb)
        _norm(out, p + "out_layers.0.", c)
        _conv(out, p + "out_layers.3.", c, c, 3)
        if cin != c:
            _conv(out, p + "skip_connection.", c, cin, 1)

    def st(p: str, c: int) -> None:
        _norm(out, p + "norm.", c)
        _conv(out, p + "proj_in.", c, c, 1)
        q = p + "transformer_blocks.0."
        for n in ("to_q", "to_k", "to_v"):
            _lin(out, q + f"attn1.{n}.", c, c, bias=False)
        _lin(out, q + "attn1.to_out.0.", c, c)
        _lin(out, q + "ff.net.0.proj.", 8 * c, c)
        _lin(out, q + "ff.net.2.", c, 4 * c)
        _lin(out, q + "attn2.to_q.", c, c, bias=False)
        _lin(out, q + "attn2.to_k.", c, ctx, bias=False)
        _lin(out, q + "attn2.to_v.", c, ctx, bias=False)
        _lin(out, q + "attn2.to_out.0.", c, c)
        for i in (1, 2, 3):
            _norm(out, q + f"norm{i}.", c)
        _conv(out, p + "proj_out.", c, c, 1)

    ch = cfg.block_channels
    levels = len(ch)
    attn = [lvl in cfg.attention_levels for lvl in range(levels)]
    _lin(out, "time_embed.0.", temb, cfg.model_channels)
    _lin(out, "time_embed.2.", temb, temb)
    _conv(out, "input_blocks.0.0.", cfg.model_channels, cfg.in_channels, 3)
    n, cin, skips = 1, cfg.model_channels, [cfg.model_channels]
    for lvl in range(levels):
        for _ in range(cfg.num_res_blocks):
            res(f"input_blocks.{n}.0.", cin, ch[lvl])
            cin = ch[lvl]
            if attn[lvl]:
                st(f"input_blocks.{n}.1.", cin)
            skips.append(cin)
            n += 1
        if lvl < levels - 1:
            _conv(out, f"input_blocks.{n}.0.op.", cin, cin, 3)
            skips.append(cin)
            n += 1
    mid = ch[-1]
    res("middle_block.0.", mid, mid)
    st("middle_block.1.", mid)
    res("middle_block.2.", mid, mid)
    n, cur = 0, mid
    for lvl in reversed(range(levels)):
        for j in range(cfg.num_res_blocks + 1):
            res(f"output_blocks.{n}.0.", cur + skips.pop(), ch[lvl])
            cur, k = ch[lvl], 1
            if attn[lvl]:
                st(f"output_blocks.{n}.1.", cur)
                k = 2
            if lvl > 0 and j == cfg.num_res_blocks:
                _conv(out, f"output_blocks.{n}.{k}.conv.", cur, cur, 3)
            n += 1
    _norm(out, "out.0.", cfg.model_channels)
    _conv(out, "out.2.", cfg.out_channels, cfg.model_channels, 3)
    return {prefix + k: v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- SD1.5 VAE
def vae_layout(cfg: VAEConfig = SD15_VAE, prefix: str = VAE_PREFIX) -> Layout:
    """``first_stage_model.*`` keys of the CompVis ``AutoencoderKL`` (docs/checkpoints.md §1.4, §3)."""
    out: Layout = {}
    ch = cfg.block_channels
    top, z = ch[-1], cfg.z_channels

    def rb(p: str, cin: int, c: int) -> None:
        _norm(out, p + "norm1.", cin)
        _conv(out, p + "conv1.", c, cin, 3)
        _norm(out, p + "norm2.", c)
        _conv(out, p + "conv2.", c, c, 3)
        if cin != c:
            _conv(out, p + "nin_shortcut.", c, cin, 1)

    def mid(p: str) -> None:
        rb(p + "mid.block_1.", top, top)
        _norm(out, p + "mid.attn_1.norm.", top)
        for n in ("q", "k", "v", "proj_out"):
            _conv(out, p + f"mid.attn_1.{n}.", top, top, 1)
        rb(p + "mid.block_2.", top, top)

    _conv(out, "encoder.conv_in.", cfg.ch, cfg.in_channels, 3)
    cin = cfg.ch
    for i, c in enumerate(ch):
        for j in range(cfg.num_res_blocks):
            rb(f"encoder.down.{i}.block.{j}.", cin, c)
            cin = c
        if i < len(ch) - 1:
            _conv(out, f"encoder.down.{i}.downsample.conv.", cin, cin, 3)
    mid("encoder.")
    _norm(out, "encoder.norm_out.", top)
    _conv(out, "encoder.conv_out.", 2 * z, top, 3)
    _conv(out, "decoder.conv_in.", top, z, 3)
    mid("decoder.")
    cin = top
    for i in reversed(range(len(ch))):
        for j in range(cfg.num_res_blocks + 1):
            rb(f"decoder.up.{i}.block.{j}.", cin, ch[i])
            cin = ch[i]
        if i > 0:
            _conv(out, f"decoder.up.{i}.upsample.conv.", cin, cin, 3)
    _norm(out, "decoder.norm_out.", cfg.ch)
    _conv(out, "decoder.conv_out.", cfg.in_channels, cfg.ch, 3)
    _conv(out, "quant_conv.", 2 * z, 2 * z, 1)
    _conv(out, "post_quant_conv.", z, z, 1)
    return {prefix + k: v for k, v in out.items()}


# --------------------------------------------------------------------------------------------------- SD1.5 CLIP
def clip_layout(cfg: CLIPTextConfig = SD15_CLIP, prefix: str = CLIP_PREFIX, *, position_ids: bool = True) -> Layout:
    """``cond_stage_model.transformer.text_model.*`` keys of the HF ``CLIPTextModel`` (docs/checkpoints.md §1.5)."""
    out: Layout = {}
    w = cfg.width
    out["embeddings.token_embedding.weight"] = (cfg.vocab_size, w)
    out["embeddings.position_embedding.weight"] = (cfg.max_positions, w)
    if position_ids:
        out["embeddings.position_ids"] = (1, cfg.max_positions)
    for layer in range(cfg.layers):
        p = f"encoder.layers.{layer}."
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _lin(out, p + f"self_attn.{n}.", w, w)
        _norm(out, p + "layer_norm1.", w)
        _lin(out, p + "mlp.fc1.", cfg.mlp_dim, w)
        _lin(out, p + "mlp.fc2.", w, cfg.mlp_dim)
        _norm(out, p + "layer_norm2.", w)
    _norm(out, "final_layer_norm.", w)
    return {prefix + k: v for k, v in out.items()}


def ema_key(unet_key: str) -> str:
    """LitEma flattening: ``model.diffusion_model.a.b`` -> ``model_ema.diffusion_modelab``."""
    return "model_ema." + unet_key.removeprefix("model.").replace(".", "")


def sd15_layout(
    unet_cfg: UNetConfig = SD15_UNET,
    vae_cfg: VAEConfig = SD15_VAE,
    clip_cfg: CLIPTextConfig = SD15_CLIP,
    *,
    position_ids: bool = True,
    ddpm_buffers: bool = False,
    ema: bool | str = False,
) -> Layout:
    """A whole SD1.5 single-file checkpoint: UNet, VAE and CLIP under their real prefixes.

    ``ddpm_buffers`` adds the 12 ``[1000]`` schedule buffers. ``ema="scalars"`` adds ``model_ema.decay`` and
    ``model_ema.num_updates``; ``ema=True`` adds those plus a full flattened EMA copy of the UNet (the layout of the
    non-"emaonly" ``v1-5-pruned`` file). Full size without extras: 1131 tensors (1130 without ``position_ids``).
    """
    unet = unet_layout(unet_cfg)
    out: Layout = {**unet, **vae_layout(vae_cfg), **clip_layout(clip_cfg, position_ids=position_ids)}
    if ddpm_buffers:
        out.update({k: (DDPM_TIMESTEPS,) for k in DDPM_BUFFERS})
    if ema:
        out.update({k: () for k in EMA_SCALARS})
        if ema is True:
            out.update({ema_key(k): v for k, v in unet.items()})
    return out


# ----------------------------------------------------------------------------------------------- AnimateDiff
def motion_module_prefixes(cfg: MotionConfig) -> list[tuple[str, int]]:
    """``(prefix, channels)`` of every motion module: down levels, the v2 mid block, then up levels."""
    ch = cfg.block_channels
    out = [(f"down_blocks.{i}.motion_modules.{j}.", c) for i, c in enumerate(ch) for j in range(cfg.layers_per_block)]
    if cfg.mid_block:
        out.append(("mid_block.motion_modules.0.", ch[-1]))
    out += [
        (f"up_blocks.{i}.motion_modules.{j}.", c)
        for i, c in enumerate(reversed(ch))
        for j in range(cfg.layers_per_block + 1)
    ]
    return out


def motion_layout(cfg: MotionConfig = MOTION_V2, *, pe: bool = True) -> Layout:
    """Keys of an AnimateDiff motion-module file (``mm_sd_v15*.ckpt``, ``v3_sd15_mm.ckpt``; docs/checkpoints.md §2.2).

    ``pe=True`` includes the two ``pos_encoder.pe`` ``[1, max_positions, C]`` buffers per module, as the released
    files do. Full size: v1/v3 560 tensors, v2 588 (520 / 546 without ``pe``).
    """
    out: Layout = {}
    for p, c in motion_module_prefixes(cfg):
        t = p + "temporal_transformer."
        b = t + "transformer_blocks.0."
        _norm(out, t + "norm.", c)
        _lin(out, t + "proj_in.", c, c)
        for a in (0, 1):
            for n in ("to_q", "to_k", "to_v"):
                _lin(out, b + f"attention_blocks.{a}.{n}.", c, c, bias=False)
            _lin(out, b + f"attention_blocks.{a}.to_out.0.", c, c)
            if pe:
                out[b + f"attention_blocks.{a}.pos_encoder.pe"] = (1, cfg.max_positions, c)
            _norm(out, b + f"norms.{a}.", c)
        _lin(out, b + "ff.net.0.proj.", 8 * c, c)
        _lin(out, b + "ff.net.2.", c, 4 * c)
        _norm(out, b + "ff_norm.", c)
        _lin(out, t + "proj_out.", c, c)
    return out


def motion_lora_layout(cfg: MotionConfig = MOTION_V2, rank: int = 64) -> Layout:
    """Keys of a MotionLoRA (``v2_lora_*.ckpt``, docs/checkpoints.md §2.6) for the modules of ``cfg``: ``down [r, C]``,
    ``up [C, r]`` per attention projection. On the full v2 tree with r=64: 336 tensors, 19,333,120 params."""
    out: Layout = {}
    for p, c in motion_module_prefixes(cfg):
        for a in (0, 1):
            for n in ("to_q", "to_k", "to_v", "to_out"):
                q = p + f"temporal_transformer.transformer_blocks.0.attention_blocks.{a}.processor.{n}_lora."
                out[q + "down.weight"] = (rank, c)
                out[q + "up.weight"] = (c, rank)
    return out


def num_params(layout: Mapping[str, Shape]) -> int:
    return sum(math.prod(s) for s in layout.values())


# ------------------------------------------------------------------------------------------------------ values
def ddpm_schedule_buffers(timesteps: int = DDPM_TIMESTEPS) -> dict[str, Tensor]:
    """The CompVis ``DDPM.register_schedule`` buffers for SD's "linear" (= scaled_linear) betas, as float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, timesteps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }
    return {k: v.float() for k, v in values.items()}


def _key_generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))


def random_state_dict(
    layout: Mapping[str, Shape], *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Deterministic plausible values for a layout; each key's values depend only on ``(seed, key)``.

    Float tensors are drawn in float32 and cast to ``dtype``: 1-D ``*weight`` (norm scales) ``1 + 0.1 N``, ``*bias``
    ``0.02 N``, other weights ``N * 0.5 / sqrt(fan_in)`` (so ``proj_out`` of motion modules is non-zero). Special keys:
    ``pos_encoder.pe`` = the sinusoid formula, ``position_ids`` = ``arange`` int64, DDPM buffers = the real schedule
    (float32), ``model_ema.decay`` = 0.9999 (float32), ``model_ema.num_updates`` = int32 scalar.
    """
    ddpm: dict[str, Tensor] | None = None
    out: dict[str, Tensor] = {}
    for key, shape in layout.items():
        shape = tuple(shape)
        if key.endswith("pos_encoder.pe"):
            _, length, dim = shape
            out[key] = sinusoidal_positions(torch.arange(length), dim)[None].to(dtype)
        elif key.endswith("position_ids"):
            out[key] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
        elif key in DDPM_BUFFERS:
            ddpm = ddpm or ddpm_schedule_buffers(shape[0])
            out[key] = ddpm[key].clone()
        elif key == "model_ema.decay":
            out[key] = torch.tensor(0.9999, dtype=torch.float32)
        elif key == "model_ema.num_updates":
            out[key] = torch.tensor(470_000 + seed, dtype=torch.int32)
        else:
            g = _key_generator(seed, key)
            x = torch.randn(shape, generator=g, dtype=torch.float32)
            if key.endswith("bias"):
                x.mul_(0.02)
            elif len(shape) == 1:  # a norm's scale
                x.mul_(0.1).add_(1.0)
            else:
                x.mul_(0.5 / math.sqrt(math.prod(shape[1:])))
            out[key] = x.to(dtype)
    return out


# ------------------------------------------------------------------------------------------------------ writing
def save_state_dict(
    sd: Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    wrap_state_dict: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``sd`` atomically (temp file in the same folder, then rename) as ``.safetensors`` or a torch pickle
    (``.ckpt``/``.pt``/``.pth``), chosen by suffix.

    Pickles only: ``extra`` entries (e.g. ``{"animatediff_config": {...}}``) are stored beside the tensors, and
    ``wrap_state_dict`` nests everything under ``"state_dict"`` with ``global_step``/``epoch`` next to it, like a
    CompVis/Lightning checkpoint. Safetensors holds tensors only, so both are errors there.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ValueError(f"unknown checkpoint suffix {path.suffix!r} for {path}; use .safetensors, .ckpt, .pt or .pth")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".safetensors":
            if wrap_state_dict or extra:
                raise ValueError("safetensors files hold tensors only; wrap_state_dict/extra need a .ckpt/.pt path")
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata={"format": "pt"})
        else:
            obj: dict[str, Any] = dict(sd)
            obj.update(extra or {})
            if wrap_state_dict:
                obj = {"state_dict": obj, "global_step": 0, "epoch": 0}
            torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_sd15_checkpoint(
    path: str | os.PathLike,
    unet_cfg: UNetConfig = SD15_UNET,
    vae_cfg: VAEConfig = SD15_VAE,
    clip_cfg: CLIPTextConfig = SD15_CLIP,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    position_ids: bool = True,
    ddpm_buffers: bool = False,
    ema: bool | str = False,
    wrap_state_dict: bool = False,
) -> dict[str, Tensor]:
    """Write a synthetic SD1.5 single-file checkpoint and return the state dict that was written."""
    layout = sd15_layout(unet_cfg, vae_cfg, clip_cfg, position_ids=position_ids, ddpm_buffers=ddpm_buffers, ema=ema)
    sd = random_state_dict(layout, seed=seed, dtype=dtype)
    save_state_dict(sd, path, wrap_state_dict=wrap_state_dict)
    return sd


def write_motion_module(
    path: str | os.PathLike,
    cfg: MotionConfig = MOTION_V2,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    pe: bool = True,
    wrap_state_dict: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Write a synthetic motion-module file (non-zero ``proj_out``) and return the state dict that was written."""
    sd = random_state_dict(motion_layout(cfg, pe=pe), seed=seed, dtype=dtype)
    save_state_dict(sd, path, wrap_state_dict=wrap_state_dict, extra=extra)
    return sd


def write_motion_lora(
    path: str | os.PathLike,
    cfg: MotionConfig = MOTION_V2,
    *,
    rank: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Write a synthetic MotionLoRA for the modules of ``cfg`` and return the state dict that was written."""
    sd = random_state_dict(motion_lora_layout(cfg, rank), seed=seed, dtype=dtype)
    save_state_dict(sd, path)
    return sd


# ------------------------------------------------------------------------------------------------------- LoRAs
LORA_STYLES = ("kohya", "peft", "diffusers", "animatediff_adapter", "sdxl_kohya")
_ATTENTION_PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                          "attn2.to_v", "attn2.to_out.0")  # fmt: skip


def lora_targets(
    unet_cfg: UNetConfig = SD15_UNET, clip_cfg: CLIPTextConfig = SD15_CLIP, *, conv: bool = False
) -> dict[str, dict[str, Shape]]:
    """The layers a LoRA of the usual kohya/diffusers coverage targets, in diffusers names, with their weight shapes:
    ``{"unet": {name: shape}, "text_encoder": {name: shape}}``. UNet: every Linear and 1x1 conv of the transformers
    (``proj_in``, attention projections, ``ff``, ``proj_out``); with ``conv`` also the ResNets (3x3 ``conv1``/``conv2``,
    ``time_emb_proj``, 1x1 ``conv_shortcut``) and the down/upsamplers, as LoCon/AnimateLCM files do. Text encoder: the
    attention projections and the MLP of every layer (names as in the LDM layout below ``transformer.``)."""
    from models.keymap import unet_ldm_to_diffusers

    unet = {}
    for key, shape in unet_layout(unet_cfg, prefix="").items():
        if not key.endswith(".weight") or len(shape) not in (2, 4):
            continue
        name = unet_ldm_to_diffusers(key.removesuffix(".weight"), unet_cfg)
        if name is None or not name.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
            continue
        in_transformer = ".attentions." in name and (len(shape) == 2 or shape[2:] == (1, 1))
        if in_transformer or (conv and (".resnets." in name or "samplers." in name)):
            unet[name] = shape
    text = {}
    for key, shape in clip_layout(clip_cfg, prefix="text_model.").items():
        if key.endswith(".weight") and (".self_attn." in key or ".mlp." in key):
            text[key.removesuffix(".weight")] = shape
    return {"unet": unet, "text_encoder": text}


def lora_layout(
    style: str,
    unet_cfg: UNetConfig = SD15_UNET,
    clip_cfg: CLIPTextConfig = SD15_CLIP,
    *,
    rank: int = 4,
    conv: bool = False,
    text_encoder: bool = True,
) -> Layout:
    """Keys and shapes of a LoRA file in a real layout (docs/lora.md §2): ``kohya`` (``lora_unet_*``/``lora_te_*``
    ``.lora_down/.lora_up.weight`` + ``.alpha``), ``peft`` (``unet.*``/``text_encoder.*`` ``.lora_A/.lora_B.weight``),
    ``diffusers`` (older: ``unet.*.processor.to_q_lora.down.weight``, ``text_encoder.*.lora_linear_layer.down.weight``),
    ``animatediff_adapter`` (``v3_sd15_adapter.ckpt``: the processor layout without ``unet.``, attention projections
    only) and ``sdxl_kohya`` (kohya keys in SDXL's layout, for refusal tests). Conv down matrices keep the kernel
    (``[r, in, 3, 3]``), conv up matrices are ``[out, r, 1, 1]``."""
    if style not in LORA_STYLES:
        raise ValueError(f"unknown LoRA style {style!r}; one of {LORA_STYLES}")
    out: Layout = {}
    if style == "sdxl_kohya":
        out["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = (rank, 768)
        out["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = (768, rank)
        out["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"] = (rank, 2048)
        out["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight"] = (640, rank)
        return out
    targets = lora_targets(unet_cfg, clip_cfg, conv=conv)
    if style in ("diffusers", "animatediff_adapter"):  # attention processors: q/k/v/out only
        targets["unet"] = {n: s for n, s in targets["unet"].items() if n.endswith(_ATTENTION_PROJECTIONS)}
    if style == "animatediff_adapter" or not text_encoder:
        targets["text_encoder"] = {}
    for component, layers in targets.items():
        for name, shape in layers.items():
            down, up = (rank, *shape[1:]), (shape[0], rank, *(1,) * (len(shape) - 2))
            if style == "kohya":
                base = ("lora_unet_" if component == "unet" else "lora_te_") + name.replace(".", "_")
                keys = (base + ".lora_down.weight", base + ".lora_up.weight")
                out[base + ".alpha"] = ()
            elif style == "peft":
                keys = (f"{component}.{name}.lora_A.weight", f"{component}.{name}.lora_B.weight")
            elif component == "text_encoder":  # diffusers, text encoder
                keys = tuple(f"text_encoder.{name}.lora_linear_layer.{s}.weight" for s in ("down", "up"))
            else:  # diffusers / AnimateDiff adapter: <attention>.processor.to_q_lora.down.weight (to_out.0 -> to_out)
                attention, proj = name.rsplit(".", 1) if not name.endswith("to_out.0") else (name[:-9], "to_out")
                prefix = "unet." if style == "diffusers" else ""
                keys = tuple(f"{prefix}{attention}.processor.{proj}_lora.{s}.weight" for s in ("down", "up"))
            out[keys[0]], out[keys[1]] = down, up
    return out


def write_lora(
    path: str | os.PathLike,
    style: str,
    unet_cfg: UNetConfig = SD15_UNET,
    clip_cfg: CLIPTextConfig = SD15_CLIP,
    *,
    rank: int = 4,
    alpha: float | None = None,
    conv: bool = False,
    text_encoder: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Write a synthetic LoRA (:func:`lora_layout`) with random factors (up non-zero, as after training) and return
    the state dict written. kohya ``.alpha`` entries hold ``alpha`` (default: ``rank / 2``, so the alpha/rank factor
    is exercised)."""
    layout = lora_layout(style, unet_cfg, clip_cfg, rank=rank, conv=conv, text_encoder=text_encoder)
    sd = random_state_dict({k: v for k, v in layout.items() if not k.endswith(".alpha")}, seed=seed, dtype=dtype)
    for key in layout:
        if key.endswith(".alpha"):
            sd[key] = torch.tensor(float(rank / 2 if alpha is None else alpha), dtype=torch.float32)
    save_state_dict(sd, path)
    return sd
