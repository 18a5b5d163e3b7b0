"""Export: the shipped files (an LDM single file and an AnimateDiff v2 motion module, fp16 safetensors) and their
manifest (SHA-256, and how each was trained)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from experiments.train_toyworld.recipe import CHECKPOINT_NAME, MOTION_NAME
from models.clip_text import CLIPTextModel
from models.motion_module import MotionModules
from models.synthetic import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, save_state_dict
from models.unet import UNetModel
from models.vae import AutoencoderKL


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

