"""Loading SD1.5 and AnimateDiff checkpoints strictly into our modules.

Our modules are named like the checkpoints (docs/checkpoints.md §1-2), so loading is: read the file
(:mod:`models.readers`), check which kind of model it is (:mod:`models.families`), split it by prefix, infer the
widths from the tensor shapes (:mod:`models.config_from_keys`) and ``load_state_dict`` strictly. The only keys ever
skipped are the named entries of :data:`IGNORED_KEYS`; anything else missing or unexpected raises a
:class:`KeyMismatchError` with a grouped diff.

Modules are built on the ``meta`` device (:func:`build_on_meta`: no weight memory, no random init), then the file's
tensors are assigned directly (``load_state_dict(assign=True)``), so a checkpoint occupies memory once. The only
tensors a checkpoint does not supply are non-persistent buffers computed at construction (the motion modules'
sinusoidal position tables): they stay on meta until :func:`load_strict` asks their module to ``reset_buffers`` on
the target device.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from models.attention import sinusoidal_positions
from models.config import UNetConfig
from models.config_from_keys import infer_clip_config, infer_motion_config, infer_unet_config, infer_vae_config
from models.families import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    detect_family,
    detect_motion_version,
    family_advice,
    motion_keys,
)
from models.readers import CheckpointError, KeyMismatchError, WrongFamilyError, read_state_dict

# The CompVis DDPM.register_schedule buffers (float32 [1000]); AnimateDiff uses its own linear-beta schedule.
DDPM_BUFFERS = frozenset(
    {
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
    }
)

# The only keys of an SD1.5 file that loading skips; every one has a reason.
IGNORED_KEYS: dict[str, Callable[[str], bool]] = {
    "DDPM schedule buffers (SD's scaled_linear betas; AnimateDiff samples with its own linear schedule)": (
        lambda k: k in DDPM_BUFFERS
    ),
    "model_ema.* (EMA copy of the UNet; like AnimateDiff we load the non-EMA model.diffusion_model.*)": (
        lambda k: k.startswith("model_ema.")
    ),
    "CLIP text_projection (used by CLIP's image-text head, not by SD)": (
        lambda k: k.startswith(CLIP_PREFIX) and k.endswith("text_projection.weight")
    ),
    "CLIP logit_scale (image-text head, not used by SD)": lambda k: (
        k.startswith(CLIP_PREFIX) and k.endswith("logit_scale")
    ),
    "CLIP position_ids (always arange(n); stored copies can be stale or float-rounded)": (
        lambda k: k.startswith(CLIP_PREFIX) and k.endswith("embeddings.position_ids")
    ),
}


def _group_keys(keys: Iterable[str], max_groups: int = 8) -> list[str]:
    """Group keys at the first depth where they differ, each group shown by its longest common prefix."""
    parts = [k.split(".") for k in sorted(keys)]
    depth = 1
    while depth < max(len(p) for p in parts) and len({tuple(p[:depth]) for p in parts}) == 1:
        depth += 1
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for p in parts:
        groups.setdefault(tuple(p[:depth]), []).append(p)
    lines = []
    for members in list(groups.values())[:max_groups]:
        common = members[0]
        for p in members[1:]:
            n = next((i for i, (a, b) in enumerate(zip(common, p)) if a != b), min(len(common), len(p)))
            common = common[:n]
        if len(members) == 1:
            lines.append(f"    {'.'.join(members[0])}")
        else:
            lines.append(f"    {'.'.join(common)}.* ({len(members)}), e.g. {'.'.join(members[0])}")
    if len(groups) > max_groups:
        lines.append(f"    ... and {len(groups) - max_groups} more groups")
    return lines


def key_diff(
    missing: Iterable[str], unexpected: Iterable[str], mismatched: Mapping[str, tuple[Any, Any]] | None = None
) -> str:
    """A grouped, readable diff of missing / unexpected / wrongly shaped keys."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    parts = []
    if missing:
        parts += [f"  missing from the file ({len(missing)}):", *_group_keys(missing)]
    if unexpected:
        parts += [f"  unexpected in the file ({len(unexpected)}):", *_group_keys(unexpected)]
    if mismatched:
        parts.append(f"  wrong shapes ({len(mismatched)}):")
        for k, (got, want) in list(sorted(mismatched.items()))[:10]:
            parts.append(f"    {k}: file {list(got)}, model {list(want)}")
    return "\n".join(parts)


class _NoInitOnMeta(TorchFunctionMode):
    """Inside the ``with`` block only: ``nn.init.*`` and in-place random fills are no-ops on meta tensors. Random
    init of a meta tensor is meaningless, and ``normal_`` on meta runs a Python decomposition that imports
    ``torch._dynamo`` (seconds). A torch-function mode is scoped to the block; nothing is patched."""

    SKIPPED = frozenset(
        {
            "uniform_",
            "normal_",
            "trunc_normal_",
            "constant_",
            "ones_",
            "zeros_",
            "zero_",
            "fill_",
            "eye_",
            "dirac_",
            "xavier_uniform_",
            "xavier_normal_",
            "kaiming_uniform_",
            "kaiming_normal_",
            "orthogonal_",
            "sparse_",
        }
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self.SKIPPED:
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
            if isinstance(tensor, Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Run ``factory()`` under ``torch.device("meta")``: parameters and buffers are shapes only (no memory, no random
    init). :func:`load_strict` fills the parameters from the file and has each module whose buffers are still on meta
    recompute them (``reset_buffers``); anything left on meta after that is reported."""
    with torch.device("meta"), _NoInitOnMeta():
        return factory()


def load_strict(
    module: nn.Module,
    sd: dict[str, Tensor],
    *,
    what: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    key_prefix: str = "",
) -> nn.Module:
    """Assign ``sd`` to ``module`` strictly: every key must match in name and shape, or a :class:`KeyMismatchError`
    with a grouped diff (keys shown with ``key_prefix``, i.e. as in the file) is raised. Floating tensors are cast to
    ``dtype`` and moved to ``device``; ``sd`` is consumed (emptied) so converted copies do not coexist with it."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    mismatched = {
        key_prefix + k: (tuple(sd[k].shape), expected[k])
        for k in expected.keys() & sd.keys()
        if tuple(sd[k].shape) != expected[k]
    }
    if missing or unexpected or mismatched:
        raise KeyMismatchError(
            f"the {what} weights do not match the model:\n"
            + key_diff({key_prefix + k for k in missing}, {key_prefix + k for k in unexpected}, mismatched)
            + "\nThe file is not a standard checkpoint of this kind or is damaged; check it with "
            "scripts/inspect_checkpoint.py"
        )
    reference = module.state_dict()
    wrong_kind = {
        key_prefix + k: str(v.dtype).removeprefix("torch.")
        for k, v in sd.items()
        if reference[k].is_floating_point() and not v.is_floating_point()
    }
    if wrong_kind:
        raise CheckpointError(
            f"the {what} weights hold integer or boolean tensors where floating-point weights belong:\n"
            + "\n".join(f"    {k}: {d}" for k, d in list(wrong_kind.items())[:8])
            + "\nQuantized or otherwise converted files are not supported; use the original fp16/fp32 checkpoint"
        )
    converted, non_finite = {}, []
    for k in list(sd):
        t = sd.pop(k)
        converted[k] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        if converted[k].is_floating_point() and not bool(torch.isfinite(converted[k]).all()):
            non_finite.append(key_prefix + k)
    if non_finite:  # NaN weights only ever give black frames; say which, at load time
        raise CheckpointError(
            f"the {what} weights contain NaN or infinite values in {len(non_finite)} tensor(s) (in the file, or "
            f"overflowing when cast to {str(dtype).removeprefix('torch.')}):\n"
            + "\n".join(f"    {k}" for k in non_finite[:8])
            + ("\n    ..." if len(non_finite) > 8 else "")
            + "\nThe file is damaged (a diverged training run or a bad merge); use another checkpoint"
        )
    module.load_state_dict(converted, strict=True, assign=True)
    for sub in module.modules():  # non-persistent buffers (not in any file) are computed where the weights landed
        if any(b.is_meta for b in sub.buffers(recurse=False)) and hasattr(sub, "reset_buffers"):
            sub.reset_buffers(device)
    module.to(device=device, dtype=dtype)  # and take the weights' dtype
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise RuntimeError(f"internal error: {what} tensors left on the meta device after loading: {leftover[:5]}")
    return module.eval().requires_grad_(False)


def split_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def clip_component(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The text encoder as ``text_model.*`` keys, from files with or without ``text_model.`` after the prefix."""
    out = {}
    for k, v in split_prefix(sd, CLIP_PREFIX).items():
        out[k if k.startswith("text_model.") else "text_model." + k] = v
    return out


def _check_position_ids(clip: dict[str, Tensor]) -> None:
    ids = clip.pop("text_model.embeddings.position_ids", None)
    if ids is None:
        return
    n = ids.shape[-1]
    if ids.numel() != n or not torch.equal(ids.reshape(-1).double().round(), torch.arange(n, dtype=torch.float64)):
        warnings.warn(
            f"the checkpoint's CLIP position_ids ({ids.dtype}, {list(ids.shape)}) are not arange({n}) (a known "
            f"artifact of some merges); they are ignored and arange({n}) is used, as in SD1.5",
            stacklevel=3,
        )


def _fix_vae_attention(vae: dict[str, Tensor]) -> None:
    """Accept linear ``[C, C]`` mid-attention weights (old diffusers conversions) as 1x1 convs ``[C, C, 1, 1]``."""
    for k, v in list(vae.items()):
        if re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight", k) and v.ndim == 2:
            vae[k] = v[:, :, None, None]


def is_ignored(key: str) -> bool:
    return any(rule(key) for rule in IGNORED_KEYS.values())


def load_vae(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A standalone VAE file (e.g. ``vae-ft-mse-840000-ema-pruned``: LDM keys with or without ``first_stage_model.``)
    or the VAE of a full SD1.5 file. Keys outside ``encoder./decoder./quant_conv./post_quant_conv.`` (training
    extras such as ``loss.*`` or ``model_ema.*``) are skipped."""
    sd = read_state_dict(path)
    family = detect_family(sd)
    if family not in ("vae-only", "sd15"):
        raise WrongFamilyError(f"{path} is not a VAE: {family_advice(family, sd, 'vae=')}", family)
    return _build_vae(sd, path, device, dtype)


def _build_vae(sd: Mapping[str, Tensor], path: Any, device: Any, dtype: torch.dtype) -> nn.Module:
    from models.vae import AutoencoderKL

    vae = split_prefix(sd, VAE_PREFIX) if any(k.startswith(VAE_PREFIX) for k in sd) else dict(sd)
    vae = {k: v for k, v in vae.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    if not vae:
        raise KeyMismatchError(f"{path} has no VAE weights (first_stage_model.encoder.*, ...)")
    _fix_vae_attention(vae)
    cfg = infer_vae_config(vae)
    return load_strict(
        build_on_meta(lambda: AutoencoderKL(cfg)), vae, what="VAE", device=device, dtype=dtype, key_prefix=VAE_PREFIX
    )


def load_sd15(
    path: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Load an SD1.5 single-file checkpoint -> ``(unet, vae, text_encoder)`` in eval mode on ``device``/``dtype``.

    Widths come from the tensor shapes (tiny test files and real files take the same path). The non-EMA
    ``model.diffusion_model.*`` is used. ``vae`` replaces (or supplies, for "noVAE" files) the VAE from a standalone
    VAE file. Other families are rejected with a :class:`WrongFamilyError` naming what the file is.
    """
    from models.clip_text import CLIPTextModel
    from models.unet import UNetModel

    sd = read_state_dict(path)
    family = detect_family(sd)
    if family == "lora":  # a LoRA is merged on top of a full checkpoint, never loaded as one (docs/lora.md)
        raise WrongFamilyError(
            f"{path} is not an SD1.5 checkpoint: it is a LoRA (low-rank deltas only), not a full model; pass a full "
            f"SD1.5 checkpoint as the base "
            f"model and this file as lora= (CLI: 'lora=[{os.path.basename(path)}:0.8]'; Python: "
            f"from_single_files(checkpoint, motion_module, loras=[(path, 0.8)]))",
            family,
        )
    if family != "sd15":
        raise WrongFamilyError(
            f"{path} is not an SD1.5 checkpoint: {family_advice(family, sd, 'the base model')}", family
        )

    known = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)
    stray = [k for k in sd if not k.startswith(known) and not is_ignored(k)]
    if stray:  # docs/checkpoints.md §1.1: keys outside the three components are not weights; say so, never silently
        warnings.warn(
            f"{path}: ignoring {len(stray)} keys outside the UNet/VAE/text-encoder prefixes (not model weights):\n"
            + key_diff([], stray),
            stacklevel=2,
        )

    has_vae = any(k.startswith(VAE_PREFIX) for k in sd)
    if vae is None and not has_vae:
        raise KeyMismatchError(
            f"{path} has no VAE weights (first_stage_model.*), as some 'noVAE' community files do; pass a standalone "
            f"VAE file as vae= (e.g. vae-ft-mse-840000-ema-pruned.safetensors)"
        )
    if not any(k.startswith(CLIP_PREFIX) for k in sd):
        raise KeyMismatchError(f"{path} has no text-encoder weights (cond_stage_model.transformer.*)")

    clip = clip_component(sd)
    _check_position_ids(clip)
    clip = {k: v for k, v in clip.items() if not is_ignored(CLIP_PREFIX + k)}
    clip_cfg = infer_clip_config(clip)
    text_encoder = load_strict(
        build_on_meta(lambda: CLIPTextModel(clip_cfg)),
        clip,
        what="text encoder",
        device=device,
        dtype=dtype,
        key_prefix=CLIP_PREFIX,
    )

    vae_module = load_vae(vae, device=device, dtype=dtype) if vae is not None else _build_vae(sd, path, device, dtype)

    unet_sd = split_prefix(sd, UNET_PREFIX)
    sd.clear()  # drop the reader's references so converted tensors replace, not duplicate, the file's
    unet_cfg = infer_unet_config(unet_sd)
    unet = load_strict(
        build_on_meta(lambda: UNetModel(unet_cfg)),
        unet_sd,
        what="UNet",
        device=device,
        dtype=dtype,
        key_prefix=UNET_PREFIX,
    )
    return unet, vae_module, text_encoder


def _pe_tolerance(dtype: torch.dtype) -> float:
    return {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-5)


def load_motion_module(
    path: str | os.PathLike,
    *,
    unet_config: UNetConfig | None = None,
    version: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load an AnimateDiff motion-module file (v1 ``mm_sd_v14/15``, v2 ``mm_sd_v15_v2``, v3 ``v3_sd15_mm``).

    Version: a ``mid_block.motion_modules`` key means v2; otherwise the stored ``pe`` length 24 means v1 and 32 v3.
    A file without any ``pe`` (re-saved after AnimateDiff stopped reading it) cannot tell v1 from v3: it is loaded as
    v3 (32 positions) with a warning unless ``version=`` says otherwise. A stored ``pe`` must equal the sinusoid
    formula (it is then dropped and recomputed). ``unet_config`` (or a UNet's ``.config``) is checked against the
    module widths.
    """
    from models.motion_module import MotionModules

    sd = read_state_dict(path)
    family = detect_family(sd)
    if family != "motion-module":
        raise WrongFamilyError(
            f"{path} is not an AnimateDiff motion module: {family_advice(family, sd, 'motion_module=')}", family
        )
    mm = motion_keys(sd)
    del sd
    found, pe_len = detect_motion_version(mm)
    if version is None:
        if found is None and pe_len is None:
            found = 3
            warnings.warn(
                f"{path} stores no pos_encoder.pe, so v1 and v3 cannot be told apart; loading it as v3 (32 positions). "
                f"Pass version=1 for an mm_sd_v14/v15 file",
                stacklevel=2,
            )
        elif found is None:
            raise CheckpointError(
                f"{path}: motion-module pe length {pe_len} matches no known version (v1: 24, v2/v3: 32); "
                f"pass version= explicitly if this is a known variant"
            )
        version = found
    elif found is not None and found != version:
        raise CheckpointError(f"{path} looks like a v{found} motion module, but version={version} was requested")
    max_positions = pe_len or (24 if version == 1 else 32)

    for k in [k for k in mm if k.endswith("pos_encoder.pe")]:
        pe = mm.pop(k)
        if pe.ndim != 3 or pe.shape[1] != max_positions:
            raise KeyMismatchError(f"{path}: {k} has shape {list(pe.shape)}, expected [1, {max_positions}, C]")
        ref = sinusoidal_positions(torch.arange(pe.shape[1]), pe.shape[2])[None]
        err = (pe.float() - ref).abs().max().item()
        if not err <= _pe_tolerance(pe.dtype):
            raise CheckpointError(
                f"{path}: stored {k} differs from the AnimateDiff sinusoid formula by up to {err:.3g}; the file is "
                f"corrupt or a variant this loader does not know"
            )

    cfg = infer_motion_config(mm, version, max_positions)
    ucfg = getattr(unet_config, "config", unet_config)
    if ucfg is not None:
        unet_ch, unet_layers = tuple(ucfg.block_channels), ucfg.num_res_blocks
        if unet_ch != tuple(cfg.block_channels) or unet_layers != cfg.layers_per_block:
            raise CheckpointError(
                f"motion module / UNet mismatch: {path} has block channels {tuple(cfg.block_channels)} with "
                f"{cfg.layers_per_block} modules per down level, but the UNet has {unet_ch} with {unet_layers} res "
                f"blocks per level. SD1.5 motion modules (320/640/1280/1280) need an SD1.5 UNet; use a motion module "
                f"made for this base model"
            )

    expected = build_on_meta(lambda: MotionModules(cfg))
    expected_keys = set(expected.state_dict())
    if not any(k.startswith("mid_block.") for k in expected_keys) and any(k.startswith("mid_block.") for k in mm):
        raise KeyMismatchError(f"{path}: mid-block motion modules found, but version {version} has none")
    return load_strict(expected, mm, what=f"motion-module (v{version})", device=device, dtype=dtype)


def load_motion_lora(path: str | os.PathLike, motion: nn.Module, alpha: float = 1.0) -> list[str]:
    """Merge a MotionLoRA file into ``motion`` in place (``W += alpha * up @ down``); return the merged weight names.

    MotionLoRAs were released for v2 only. A LoRA with mid-block entries on a v1/v3 tree (no mid block) is refused,
    as is any LoRA whose targets or widths do not match ``motion``; nothing is changed in that case.
    """
    from models.motion_module import merge_motion_lora, parse_motion_lora_key

    sd = read_state_dict(path)
    family = detect_family(sd)
    if family != "motion-lora":
        raise WrongFamilyError(f"{path} is not a MotionLoRA: {family_advice(family, sd, 'motion_lora=')}", family)
    lora = {k: v for k, v in motion_keys(sd).items() if "_lora." in k}
    cfg = motion.config
    if not cfg.mid_block and any(k.startswith("mid_block.") for k in lora):
        raise CheckpointError(
            f"{path} is a MotionLoRA for AnimateDiff v2 (it has mid-block entries), but the motion module is "
            f"v{cfg.version}, which has no mid block. MotionLoRAs need the mm_sd_v15_v2 motion module"
        )
    params = {k: tuple(p.shape) for k, p in motion.named_parameters()}
    bad = {}
    for k, v in lora.items():
        parsed = parse_motion_lora_key(k)
        if parsed is None:
            raise KeyMismatchError(
                f"{path}: {k} is not a MotionLoRA key (…processor.to_{{q,k,v,out}}_lora.{{down,up}}.weight)"
            )
        target, side = parsed
        if target not in params:
            raise KeyMismatchError(
                f"{path}: {k} targets {target}, which this v{cfg.version} motion module does not have"
            )
        want = params[target][1] if side == "down" else params[target][0]
        got = v.shape[1] if side == "down" else v.shape[0]
        if v.ndim != 2 or got != want:
            bad[k] = (tuple(v.shape), params[target])
    if bad:
        raise CheckpointError(
            f"motion LoRA / motion module mismatch: {path} has widths that do not fit the motion module "
            f"(block channels {tuple(cfg.block_channels)}):\n"
            + "\n".join(f"    {k}: LoRA {list(s)} vs weight {list(w)}" for k, (s, w) in list(bad.items())[:8])
        )
    try:
        return merge_motion_lora(motion, lora, alpha)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
