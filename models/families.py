"""Which kind of checkpoint a state dict is, and what to tell the user when it is not the kind they passed.

The key layouts behind these rules are described in docs/checkpoints.md: an SD1.5 LDM single file holds three
components under fixed prefixes (§1), AnimateDiff motion modules hold only ``*motion_modules.*`` keys (§2), and other
families (SD2, SDXL, inpainting, LoRAs, standalone VAEs) are told apart by a few characteristic keys and shapes.
Values may be tensors or bare shapes, so inspection tools can classify a file from its header alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # + "text_model." (most files) or directly "embeddings." (old files)

FAMILIES = ("sd15", "sd15-inpaint", "sd2", "sdxl", "vae-only", "motion-module", "motion-lora", "lora", "unknown")


def shape_of(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def context_dim(sd: Mapping[str, Any], prefix: str = UNET_PREFIX) -> int | None:
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith("attn2.to_k.weight"):
            return shape_of(v)[-1]
    return None


def detect_family(sd: Mapping[str, Any]) -> str:
    """Which kind of checkpoint a state dict is (values may be tensors or shapes); one of :data:`FAMILIES`.

    Rules, in order: ``motion_modules.`` keys with ``_lora.`` -> "motion-lora", without an LDM UNet -> "motion-module";
    kohya ``lora_unet_``/``lora_te_`` or ``lora_down``/``lora_A`` or spatial ``processor.*_lora`` keys -> "lora";
    an LDM UNet (``model.diffusion_model.``) with ``label_emb``/``conditioner.`` or context 2048 -> "sdxl", context 1024
    or an OpenCLIP ``cond_stage_model.model.`` -> "sd2", 9 input channels -> "sd15-inpaint", 4 -> "sd15";
    a bare or ``first_stage_model.`` VAE without UNet/text encoder -> "vae-only"; otherwise "unknown".
    """
    keys = list(sd)
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    motion = [k for k in keys if "motion_modules." in k]
    if motion:
        if any("_lora." in k for k in motion):
            return "motion-lora"
        if not has_unet:
            return "motion-module"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys) or any(
        re.search(r"\.(lora_down|lora_up|lora_A|lora_B)\.|processor\.\w+_lora\.", k) for k in keys
    ):
        return "lora"
    if any(k.startswith(("conditioner.embedders.", UNET_PREFIX + "label_emb.")) for k in keys):
        return "sdxl"
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        ctx = context_dim(sd)
        if ctx == 2048:
            return "sdxl"
        if ctx == 1024 or any(k.startswith("cond_stage_model.model.") for k in keys):
            return "sd2"
        cin = shape_of(conv_in)[1]
        return {4: "sd15", 9: "sd15-inpaint"}.get(cin, "unknown")
    if not has_unet and not any(k.startswith("cond_stage_model.") for k in keys):
        if any(k.startswith(VAE_PREFIX + "encoder.") or k.startswith(VAE_PREFIX + "decoder.") for k in keys):
            return "vae-only"
        if "encoder.conv_in.weight" in sd and "decoder.conv_out.weight" in sd:
            return "vae-only"
    return "unknown"


def detect_motion_version(sd: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(version, pe_length)`` of motion-module keys: a ``mid_block.motion_modules`` key means v2, otherwise the
    stored ``pos_encoder.pe`` length says v1 (24) or v3 (32). ``None`` where the file does not tell."""
    pe_len = next((shape_of(v)[1] for k, v in sd.items() if k.endswith("pos_encoder.pe")), None)
    if any("mid_block.motion_modules." in k for k in sd):
        return 2, pe_len
    return {24: 1, 32: 3}.get(pe_len), pe_len


def _top_prefixes(keys: Iterable[str], n: int = 6) -> str:
    from models.readers import shorten  # a key name from a file is shown cut, never 1 MB in full

    counts = Counter(shorten(".".join(k.split(".")[:2]), 60) for k in keys)
    return ", ".join(f"{p}.* ({c})" for p, c in counts.most_common(n))


def family_advice(family: str, sd: Mapping[str, Any], wanted: str) -> str:
    """What the file is and what to do with it, for an error raised when ``wanted`` was expected."""
    if family == "motion-module":
        version, _ = detect_motion_version(sd)
        v = f" (v{version})" if version else ""
        return f"this looks like an AnimateDiff motion module{v}; pass it as motion_module= (load_motion_module)"
    if family == "motion-lora":
        return "this looks like an AnimateDiff MotionLoRA; pass it as motion_lora= (load_motion_lora) on top of a v2 motion module"
    if family == "lora":
        return "this is a LoRA (low-rank deltas only, e.g. kohya lora_unet_/lora_te_ keys), not a full model; pass a full SD1.5 checkpoint as the base model"
    if family == "vae-only":
        return "this is a standalone VAE; pass it as vae= (load_vae) together with a full SD1.5 checkpoint"
    if family == "sd15-inpaint":
        cin = shape_of(sd[UNET_PREFIX + "input_blocks.0.0.weight"])[1]
        return (
            f"this is an SD1.5 inpainting checkpoint (UNet conv_in has {cin} input channels, expected 4); "
            f"AnimateDiff needs a standard text-to-image SD1.5 checkpoint such as v1-5-pruned-emaonly"
        )
    if family == "sd2":
        return (
            f"this is a Stable Diffusion 2.x checkpoint (cross-attention context {context_dim(sd)}, expected 768 "
            f"for SD1.5's CLIP ViT-L/14); AnimateDiff SD1.5 motion modules need an SD1.x checkpoint"
        )
    if family == "sdxl":
        return "this is an SDXL checkpoint; this project implements SD1.5 + AnimateDiff only, pass an SD1.5 checkpoint"
    if family == "sd15":
        return f"this is a full SD1.5 checkpoint; pass it as the base model (load_sd15), not as {wanted}"
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        return f"its UNet has {shape_of(conv_in)[1]} input channels (expected 4); only standard SD1.5 checkpoints are supported"
    if any(k.startswith(("down_blocks.", "up_blocks.", "unet.", "conv_in.")) for k in sd):
        return "it looks like a diffusers-format model; pass the original single-file (LDM) checkpoint instead"
    return f"its keys are not an SD1.5 or AnimateDiff layout (top-level prefixes: {_top_prefixes(sd)})"


_MOTION_ROOT = re.compile(r"^(?:.*?\.)?((?:down_blocks|up_blocks|mid_block)\..*motion_modules\..*)$")


def motion_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys containing ``motion_modules.`` (as the official loader keeps), with any prefix before the block removed
    (``unet.``, ``module.``, a training wrapper)."""
    out = {}
    for k, v in sd.items():
        if "motion_modules." in k and (m := _MOTION_ROOT.match(k)):
            out[m[1]] = v
    return out
