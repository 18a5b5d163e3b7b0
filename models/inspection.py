"""Inspect a checkpoint: what it is, what it holds, and how its keys compare with our modules.

    python scripts/inspect_checkpoint.py path/to/model.safetensors [--keys] [--sha256]
    python -m models.inspection path/to/model.safetensors                               # the same

Prints the detected family (sd15, motion-module, ...), the motion-module version, tensor counts / parameters /
dtypes per component, the architecture inferred from the shapes, and any missing, unexpected or wrongly shaped keys
against our modules (built on the meta device: nothing is loaded). Safetensors files are inspected from their header
alone; torch pickles are memory-mapped with a weights-only load. Exit status 0 when the file would load, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

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
from models.loading import IGNORED_KEYS, build_on_meta, clip_component, is_ignored, key_diff, split_prefix
from models.readers import CheckpointError, file_sha256, read_shapes

Shapes = dict[str, tuple[int, ...]]


def summary(name: str, entries: Mapping[str, tuple[tuple[int, ...], str]]) -> str:
    params = sum(math.prod(s) for s, _ in entries.values())
    dtypes = Counter(d for _, d in entries.values())
    dt = ", ".join(f"{d} x{n}" for d, n in dtypes.most_common())
    return f"  {name:<34} {len(entries):>6} tensors {params:>15,} params   {dt}"


def compare(what: str, file_shapes: Shapes, factory: Callable[[], object], key_prefix: str = "") -> bool:
    module = build_on_meta(factory)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = expected.keys() - file_shapes.keys()
    unexpected = file_shapes.keys() - expected.keys()
    mismatched = {
        key_prefix + k: (file_shapes[k], expected[k])
        for k in expected.keys() & file_shapes.keys()
        if file_shapes[k] != expected[k]
    }
    if not (missing or unexpected or mismatched):
        print(f"  {what}: all {len(expected)} keys and shapes match")
        return True
    print(f"  {what}: MISMATCH")
    print(key_diff({key_prefix + k for k in missing}, {key_prefix + k for k in unexpected}, mismatched))
    return False


def inspect_sd15(shapes: Shapes) -> bool:
    from models.clip_text import CLIPTextModel
    from models.unet import UNetModel
    from models.vae import AutoencoderKL

    ok = True
    unet = split_prefix(shapes, UNET_PREFIX)
    ucfg = infer_unet_config(unet)
    print(f"  inferred {ucfg}")
    ok &= compare("UNet", unet, lambda: UNetModel(ucfg), UNET_PREFIX)

    vae = split_prefix(shapes, VAE_PREFIX) if any(k.startswith(VAE_PREFIX) for k in shapes) else {}
    if vae:
        vae = {
            k: (s + (1, 1) if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", k) and len(s) == 2 else s)
            for k, s in vae.items()
        }
        vcfg = infer_vae_config(vae)
        print(f"  inferred {vcfg}")
        ok &= compare("VAE", vae, lambda: AutoencoderKL(vcfg), VAE_PREFIX)
    else:
        print("  VAE: none in the file (a 'noVAE' checkpoint): load_sd15(..., vae=<standalone VAE file>)")

    clip = {k: s for k, s in clip_component(shapes).items() if not is_ignored(CLIP_PREFIX + k)}
    ccfg = infer_clip_config(clip)
    print(f"  inferred {ccfg}")
    ok &= compare("text encoder", clip, lambda: CLIPTextModel(ccfg), "cond_stage_model.transformer.")

    stray = [k for k in shapes if not k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) and not is_ignored(k)]
    if stray:
        print("  keys outside the components and not on the ignore list (load_sd15 refuses these):")
        print(key_diff([], stray))
        ok = False
    return ok


def inspect_motion(shapes: Shapes) -> bool:
    from models.motion_module import MotionModules

    mm = motion_keys(shapes)
    version, pe_len = detect_motion_version(mm)
    print(
        f"  version: {'v' + str(version) if version else 'unknown (no pe stored; loaded as v3 by default)'}, pe length {pe_len}"
    )
    version = version or 3
    weights = {k: s for k, s in mm.items() if not k.endswith("pos_encoder.pe")}
    cfg = infer_motion_config(weights, version, pe_len or (24 if version == 1 else 32))
    print(f"  inferred {cfg}")
    return compare(f"motion modules (v{version})", weights, lambda: MotionModules(cfg))


def inspect_motion_lora(shapes: Shapes) -> bool:
    lora = {k: s for k, s in motion_keys(shapes).items() if "_lora." in k}
    ranks = sorted({s[0] for k, s in lora.items() if k.endswith("down.weight")})
    mid = any(k.startswith("mid_block.") for k in lora)
    modules = {k.split(".temporal_transformer.")[0] for k in lora}
    print(f"  {len(modules)} motion modules, rank {ranks}, {'with' if mid else 'without'} mid block")
    print(f"  applies to: {'v2 motion modules only (mid-block entries)' if mid else 'v1/v2/v3 motion modules'}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--keys", action="store_true", help="print every key with its shape and dtype")
    parser.add_argument("--sha256", action="store_true", help="also hash the file (reads it completely)")
    args = parser.parse_args(argv)

    try:
        entries = read_shapes(args.path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shapes = {k: s for k, (s, _) in entries.items()}
    family = detect_family(shapes)

    print(f"file: {args.path} ({args.path.stat().st_size:,} bytes)")
    if args.sha256:
        print(f"sha256: {file_sha256(args.path)}")
    print(f"family: {family}")
    print(summary("total", entries))
    groups: dict[str, dict] = {}
    for k, v in entries.items():
        if k.startswith(UNET_PREFIX):
            name = "UNet (model.diffusion_model.)"
        elif k.startswith(VAE_PREFIX):
            name = "VAE (first_stage_model.)"
        elif k.startswith(CLIP_PREFIX):
            name = "text encoder (cond_stage_model.)"
        elif "motion_modules." in k:
            name = "motion modules"
        else:
            name = next((reason.split(" (")[0] for reason, rule in IGNORED_KEYS.items() if rule(k)), "other")
        groups.setdefault(name, {})[k] = v
    order = ["UNet (model.diffusion_model.)", "VAE (first_stage_model.)", "text encoder (cond_stage_model.)"]
    for name in sorted(groups, key=lambda n: (order.index(n) if n in order else len(order), n == "other")):
        print(summary(name, groups[name]))
    if args.keys:
        for k, (s, d) in entries.items():
            print(f"    {k} {list(s)} {d}")

    print("compared with our modules:")
    try:
        if family == "sd15":
            ok = inspect_sd15(shapes)
        elif family == "motion-module":
            ok = inspect_motion(shapes)
        elif family == "motion-lora":
            ok = inspect_motion_lora(shapes)
        else:
            print(f"  {family_advice(family, shapes, 'a checkpoint')}")
            ok = family == "vae-only"
    except CheckpointError as e:
        print(f"  cannot compare: {e}")
        ok = False
    print("verdict: loads" if ok else "verdict: would NOT load as is")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
