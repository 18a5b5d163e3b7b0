"""SD1.5 LoRAs merged into the weights: ``W = W_base + sum_i scale_i * alpha_i / rank_i * up_i @ down_i``.

A LoRA file holds, per target layer, a ``down`` ``[r, in]`` (conv: ``[r, in, kh, kw]``) and an ``up`` ``[out, r]``
(conv: ``[out, r, 1, 1]``) matrix and optionally a scalar ``alpha`` (default ``r``, i.e. a factor of 1). The layouts
read here (docs/lora.md §2):

* **kohya / civitai**: ``lora_unet_<diffusers name with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, and
  ``lora_te_text_model_encoder_layers_0_self_attn_q_proj...`` for the text encoder; conv LoRA ("LoCon") on ResNets
  with a 3x3 ``down`` and a 1x1 ``up``. AnimateLCM's ``AnimateLCM_sd15_t2v_lora.safetensors`` uses this layout.
* **diffusers / peft**: ``unet.<name>.lora_A.weight`` (down) / ``lora_B.weight`` (up), ``text_encoder.text_model.
  ...q_proj.lora_A.weight``; older diffusers ``unet.<attention>.processor.to_q_lora.down.weight``, ``<name>.lora.down.
  weight`` and ``text_encoder.<name>.lora_linear_layer.down.weight``.
* **AnimateDiff v3's domain adapter** ``v3_sd15_adapter.ckpt``: the older diffusers processor layout without the
  ``unet.`` prefix (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight``), merged
  like AnimateDiff's own loader: ``W += scale * up @ down``.

UNet names are diffusers names and map to our LDM modules through :mod:`models.keymap`. Reading a LoRA
(:func:`read_lora`) checks the file and its layout without a model; :func:`resolve_lora` checks every target and
shape against the networks; :class:`LoRAMerger` merges, and keeps the base value of every weight it touched so that
another set of LoRAs (or none) is applied to the exact base weights.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.families import detect_family, family_advice
from models.keymap import unet_module_map
from models.readers import CheckpointError, KeyMismatchError, WrongFamilyError, read_state_dict

UNET, TEXT_ENCODER = "unet", "text_encoder"
# (compiled pattern, layout name, component or None = from the prefix); the first that matches a key wins
_KOHYA = re.compile(r"(?P<prefix>lora_unet|lora_te)_(?P<name>[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)")
_PEFT = re.compile(r"(?P<prefix>unet\.|text_encoder\.|base_model\.model\.)?(?P<name>.+)\.lora_(?P<part>A|B)\.weight")
_PROCESSOR = re.compile(
    r"(?P<prefix>unet\.)?(?P<name>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight"
)
_TE_OLD = re.compile(r"text_encoder\.(?P<name>.+)\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight")
_COMPAT = re.compile(
    r"(?P<prefix>unet\.|text_encoder\.)?(?P<name>.+)\.(?:lora|lora_linear_layer)\.(?P<part>down|up)\.weight"
)
_ALPHA = re.compile(r"(?P<prefix>unet\.|text_encoder\.|base_model\.model\.)?(?P<name>.+)\.alpha")
# formats that are LoRA-like but not plain low-rank pairs; named in the refusal
_UNSUPPORTED = {
    "LyCORIS LoHa (hada_*)": re.compile(r"\.hada_"),
    "LyCORIS LoKr (lokr_*)": re.compile(r"\.lokr_"),
    "LoCon with a Tucker core (lora_mid)": re.compile(r"\.lora_mid\."),
    "DoRA (dora_scale)": re.compile(r"\.dora_scale$"),
    "full weight differences (diff / diff_b)": re.compile(r"\.diff(_b)?$"),
    "textual-inversion embeddings bundled in the LoRA": re.compile(r"^(bundle_emb|emb_params)"),
}
_CROSS_KV = re.compile(r"attn2[._]to_[kv]")  # cross-attention k/v: their input width is the text encoder's
_SDXL = re.compile(r"^lora_te[12]_|^lora_unet_(input_blocks|output_blocks|middle_block|label_emb)_")


class LoRAError(CheckpointError):
    """A LoRA file that cannot be merged into these networks; the message lists what does not fit."""


@dataclass(frozen=True)
class LoRAPair:
    """One target's low-rank factors: ``down [r, in(, kh, kw)]``, ``up [out, r(, 1, 1)]``, ``alpha`` (None: ``r``)."""

    down: Tensor
    up: Tensor
    alpha: float | None
    key: str  # the file key of the down matrix (for messages)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: torch.Size | tuple[int, ...], device: torch.device | str = "cpu") -> Tensor:
        """``alpha / r * up @ down`` in float32, shaped like the target weight (conv: ``[out, in, kh, kw]``)."""
        up = self.up.to(device, torch.float32).flatten(1)  # [out, r]
        down = self.down.to(device, torch.float32).flatten(1)  # [r, in * kh * kw]
        ratio = 1.0 if self.alpha is None else self.alpha / self.rank
        return (ratio * (up @ down)).reshape(shape)


@dataclass
class LoRAFile:
    """A parsed LoRA file: ``{component: {module name: pair}}``; UNet names in diffusers form (dots or kohya's
    underscores), text-encoder names as Hugging Face ``text_model.*`` paths (same caveat)."""

    path: str
    layouts: tuple[str, ...]
    targets: dict[str, dict[str, LoRAPair]] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        return sum(len(t) for t in self.targets.values())


def _listing(items: Sequence[str], limit: int = 8) -> str:
    lines = [f"    {item}" for item in list(items)[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def parse_lora(sd: Mapping[str, Tensor], path: str = "<state dict>") -> LoRAFile:
    """Sort a LoRA state dict into per-target pairs (no model needed). Refuses, naming the keys: SDXL layouts,
    unsupported LoRA variants, keys of no known layout, a down without its up (or the reverse), non-float or
    non-finite factors, and mismatched ranks."""
    sdxl = [k for k in sd if _SDXL.search(k)]
    if sdxl:
        raise WrongFamilyError(
            f"{path} is an SDXL LoRA ({len(sdxl)} keys in SDXL's layout: lora_te1_/lora_te2_ text encoders or "
            f"lora_unet_input_blocks_/output_blocks_ names), e.g.\n{_listing(sorted(sdxl), 3)}\nThis project runs "
            f"SD1.5: use a LoRA trained on SD1.5",
            "sdxl",
        )
    for what, pattern in _UNSUPPORTED.items():
        found = sorted(k for k in sd if pattern.search(k))
        if found:
            raise LoRAError(
                f"{path} is a {what} file, which is not a plain LoRA (down/up pairs); only LoRA/LoCon files are "
                f"supported:\n{_listing(found, 3)}"
            )
    factors: dict[tuple[str, str], dict[str, Tensor]] = {}
    alphas: dict[tuple[str, str], Tensor] = {}
    layouts: set[str] = set()
    unknown = []
    for key, value in sd.items():
        if m := _KOHYA.fullmatch(key):
            component = UNET if m["prefix"] == "lora_unet" else TEXT_ENCODER
            name, part, layout = m["name"], m["part"].split(".")[0], "kohya"
            if part == "alpha":
                alphas[component, name] = value
                continue
            part = "down" if part == "lora_down" else "up"
        elif m := _PEFT.fullmatch(key):
            component = TEXT_ENCODER if m["prefix"] == "text_encoder." else UNET
            name, part, layout = m["name"], "down" if m["part"] == "A" else "up", "peft"
        elif m := _PROCESSOR.fullmatch(key):
            proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
            layout = "diffusers (attention processors)" if m["prefix"] else "AnimateDiff adapter"
            component, name, part = UNET, f"{m['name']}.{proj}", m["part"]
        elif m := _TE_OLD.fullmatch(key):
            component, name, part, layout = TEXT_ENCODER, f"{m['name']}.{m['proj'][3]}_proj", m["part"], "diffusers"
            if m["proj"] == "to_out":
                name = f"{m['name']}.out_proj"
        elif m := _COMPAT.fullmatch(key):
            component = TEXT_ENCODER if m["prefix"] == "text_encoder." else UNET
            name, part, layout = m["name"], m["part"], "diffusers"
        elif m := _ALPHA.fullmatch(key):
            name = m["name"]
            if m["prefix"] == "text_encoder.":
                alphas[TEXT_ENCODER, name if name.startswith("text_model.") else "text_model." + name] = value
            else:
                alphas[UNET, name] = value
            continue
        else:
            unknown.append(key)
            continue
        layouts.add(layout)
        if component == TEXT_ENCODER and not name.startswith(("text_model.", "text_model_")):
            name = ("text_model_" if layout == "kohya" else "text_model.") + name
        slot = factors.setdefault((component, name), {})
        if part in slot:
            raise LoRAError(f"{path}: two keys give the {part} matrix of {name} (one is {key}); the file is damaged")
        slot[part] = value
        slot["_key_" + part] = key  # type: ignore[assignment]
    if unknown:
        raise KeyMismatchError(
            f"{path} has {len(unknown)} keys of no known LoRA layout (kohya lora_unet_/lora_te_, diffusers/peft "
            f"lora_A/lora_B, processor.to_q_lora):\n{_listing(sorted(unknown))}"
        )
    if not factors:
        raise LoRAError(f"{path} holds no LoRA weights (no down/up pairs)")
    problems = []
    out = LoRAFile(path, tuple(sorted(layouts)))
    for (component, name), slot in sorted(factors.items()):
        missing = {"down", "up"} - set(slot)
        if missing:
            problems.append(f"{slot.get('_key_down') or slot.get('_key_up')}: no {missing.pop()} matrix")
            continue
        down, up, key = slot["down"], slot["up"], slot["_key_down"]
        bad = [k for k, t in (("down", down), ("up", up)) if not t.is_floating_point()]
        if bad:
            problems.append(f"{key}: {', '.join(bad)} holds {down.dtype if 'down' in bad else up.dtype} values")
            continue
        for side, t in (("down", down), ("up", up)):
            if not bool(torch.isfinite(t).all()):
                problems.append(f"{slot['_key_' + side]}: NaN or infinite values")
        if down.ndim not in (2, 4) or up.ndim != down.ndim and not (up.ndim == 2 and down.ndim == 4):
            problems.append(f"{key}: down {list(down.shape)} / up {list(up.shape)} are not LoRA factors")
            continue
        if up.shape[1] != down.shape[0] or any(s != 1 for s in up.shape[2:]):
            problems.append(f"{key}: up {list(up.shape)} does not fit down {list(down.shape)} (ranks differ)")
            continue
        alpha = alphas.pop((component, name), None)
        if alpha is not None:
            if alpha.numel() != 1 or not math.isfinite(float(alpha.float().reshape(()))):
                problems.append(f"{key}: its alpha {alpha.tolist() if alpha.numel() < 5 else list(alpha.shape)}")
                continue
            alpha = float(alpha.float().reshape(()))
        out.targets.setdefault(component, {})[name] = LoRAPair(down, up, alpha, key)
    if alphas:
        problems += [f"{c}: alpha for {n} without down/up matrices" for c, n in sorted(alphas)]
    if problems:
        raise LoRAError(f"{path} is damaged or not a LoRA of the supported kind:\n{_listing(problems)}")
    return out


def read_lora(path: str | os.PathLike) -> LoRAFile:
    """Read and parse a LoRA file through the readers' safety rules (:func:`models.readers.read_state_dict`). A full
    checkpoint, motion module or MotionLoRA given as a LoRA is refused with what it is and where it goes."""
    sd = read_state_dict(path)
    family = detect_family(sd)
    if family not in ("lora", "unknown"):
        advice = family_advice(family, sd, "lora=")
        if family == "motion-lora":
            advice = "this is an AnimateDiff MotionLoRA; pass it as motion.lora= (motion_lora= in Python)"
        raise WrongFamilyError(f"{path} is not an SD1.5 LoRA: {advice}", family)
    return parse_lora(sd, str(path))


def _target_names(module: nn.Module) -> dict[str, str]:
    """Module paths of ``module``'s layers with a weight, by themselves and in kohya's underscore form."""
    names = [n for n, m in module.named_modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]
    return {n: n for n in names} | {n.replace(".", "_"): n for n in names}


def resolve_lora(lora: LoRAFile, networks: Mapping[str, nn.Module]) -> dict[tuple[str, str], LoRAPair]:
    """``{(component, weight name): pair}`` for ``networks`` (``{"unet": ..., "text_encoder": ...}``), with every
    target and shape checked first; one error lists all that does not fit (unknown targets, wrong shapes, a base
    model of another width such as SDXL's 2048-wide cross-attention)."""
    out: dict[tuple[str, str], LoRAPair] = {}
    unknown, shapes = [], []
    for component, targets in lora.targets.items():
        module = networks.get(component)
        if module is None:
            unknown += [f"{pair.key} (no {component} is loaded)" for pair in targets.values()]
            continue
        names = _target_names(module)
        if component == UNET:
            diffusers = unet_module_map(module.config, list(dict.fromkeys(names.values())))
            names = diffusers | {k.replace(".", "_"): v for k, v in diffusers.items()}
        for name, pair in targets.items():
            target = names.get(name)
            if target is None:
                unknown.append(f"{pair.key} (no layer {name})")
                continue
            weight = module.get_parameter(target + ".weight")
            if not _fits(pair, tuple(weight.shape)):
                shapes.append(
                    f"{pair.key}: down {list(pair.down.shape)}, up {list(pair.up.shape)} vs {component} weight "
                    f"{target} {list(weight.shape)}"
                )
                continue
            out[component, target + ".weight"] = pair
    if unknown or shapes:
        parts = [f"the LoRA {lora.path} does not fit these SD1.5 networks:"]
        if unknown:
            parts += [f"  targets that do not exist ({len(unknown)}):", _listing(unknown)]
        if shapes:
            parts += [f"  wrong shapes ({len(shapes)}):", _listing(shapes)]
            widths = {int(p.down.shape[1]) for p in lora.targets.get(UNET, {}).values() if _CROSS_KV.search(p.key)}
            if widths & {1024, 2048}:  # SD2's OpenCLIP-H / SDXL's two text encoders
                parts.append(f"  (cross-attention inputs {sorted(widths)} wide: a LoRA for SD2/SDXL, not SD1.5)")
        parts.append("Use a LoRA trained on this base model (SD1.5, or the same tiny test widths)")
        raise KeyMismatchError("\n".join(parts))
    return out


def _fits(pair: LoRAPair, shape: tuple[int, ...]) -> bool:
    down, up = tuple(pair.down.shape), tuple(pair.up.shape)
    if up[0] != shape[0]:
        return False
    if len(shape) == 2:  # Linear [out, in]: a 2-D down, or a 1x1 conv down
        return down[1] == shape[1] and all(s == 1 for s in down[2:])
    # Conv [out, in, kh, kw]: a 4-D down with the same kernel, or a 2-D down on a 1x1 conv
    return down[1:] == shape[1:] if len(down) == 4 else (down[1] == shape[1] and shape[2:] == (1, 1))


def check_scale(scale: object, what: str) -> float:
    """A LoRA scale as a finite float (negative scales are allowed: they subtract the LoRA)."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(float(scale)):
        raise ValueError(f"{what}: the LoRA scale {scale!r} is not a finite number; use e.g. 0.8 (0 turns it off)")
    return float(scale)


class LoRAMerger:
    """The LoRAs merged into ``networks`` now, and the base value (a CPU copy) of every weight they touch.

    :meth:`set` resolves every LoRA before changing anything, then writes ``W = W_base + sum_i scale_i * delta_i``
    (in float32, cast to the weight's dtype) into each touched weight and restores weights no LoRA touches any more
    bit for bit (their base copies are dropped). Memory: the touched weights' base values, on the CPU."""

    def __init__(self, networks: Mapping[str, nn.Module]):
        self.networks = dict(networks)
        self.base: dict[tuple[str, str], Tensor] = {}

    @torch.no_grad()
    def set(self, loras: Sequence[tuple[LoRAFile, float]]) -> list[str]:
        """Merge ``[(lora, scale), ...]`` on the base weights (replacing what was merged); returns the touched
        weight names (``component:name``)."""
        resolved = [(resolve_lora(lora, self.networks), scale) for lora, scale in loras]  # all checked first
        targets: dict[tuple[str, str], list[tuple[LoRAPair, float]]] = {}
        for pairs, scale in resolved:
            for key, pair in pairs.items():
                targets.setdefault(key, []).append((pair, scale))
        for key in sorted(set(self.base) | set(targets)):
            component, name = key
            weight = self.networks[component].get_parameter(name)
            if key not in self.base:
                self.base[key] = weight.detach().to("cpu", copy=True)
            base = self.base[key]
            if key not in targets:
                weight.copy_(base)
                del self.base[key]
                continue
            merged = base.to(weight.device, torch.float32, copy=True)  # never an alias of the base copy
            for pair, scale in targets[key]:
                merged += scale * pair.delta(weight.shape, weight.device)
            weight.copy_(merged)
        return [f"{c}:{n}" for c, n in sorted(targets)]
