"""The shipped toy-world model: where its files are, and that they are the files that were trained.

A small SD1.5 single file and an AnimateDiff v2 motion module, trained by :mod:`experiments.train_toyworld`
(``python scripts/train_toyworld.py``) on the procedural world of :mod:`evaluation.toyworld` (``a red circle moving
right on a black background``, ...). They are ordinary checkpoints in the original layouts: the same loaders read
them as any community model, with no special case. They make every path of the project produce meaningful pictures
offline, in seconds on a CPU, at 64x64.

    pipe = AnimateZeroPipeline.toyworld()
    image, video = pipe.generate("a red circle moving right on a black background", seed=0)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DIR = Path(__file__).resolve().parent / "assets" / "toyworld"
CHECKPOINT = DIR / "toyworld_sd15.safetensors"
MOTION_MODULE = DIR / "mm_toyworld_v2.safetensors"
MANIFEST = DIR / "manifest.json"
# what the toy world was trained on: 64x64 pictures (and 16-frame clips, the pipeline's default length)
HEIGHT = WIDTH = 64
# the sampling its measurements use (docs/toyworld.md): 10 DDIM steps, guidance 5. Higher guidance costs color: the
# step-1 image draws the caption's color in 48 of the first 48 held-out pairs at 5 and in 27 at 7.5
STEPS, GUIDANCE = 10, 5.0


class ToyWorldMissingError(FileNotFoundError):
    """The toy-world files are not in this installation."""


def files(verify: bool = True) -> tuple[Path, Path]:
    """(checkpoint, motion module) paths, checked to exist and, with ``verify``, to match the SHA-256 in the
    manifest (about 15 MB to hash: a few tens of milliseconds)."""
    missing = [p for p in (CHECKPOINT, MOTION_MODULE, MANIFEST) if not p.is_file()]
    if missing:
        raise ToyWorldMissingError(
            f"the toy-world model files are missing ({', '.join(p.name for p in missing)} in {DIR}); reinstall "
            "animatezero from a full clone, or train them with `python scripts/train_toyworld.py`"
        )
    if verify:
        manifest = json.loads(MANIFEST.read_text())
        for path in (CHECKPOINT, MOTION_MODULE):
            want = manifest["files"][path.name]["sha256"]
            got = hashlib.sha256(path.read_bytes()).hexdigest()
            if got != want:
                raise ToyWorldMissingError(
                    f"{path} does not match its recorded SHA-256 ({got[:12]}... != {want[:12]}...): the file is "
                    "damaged or was replaced; restore it with `git checkout -- animatezero/assets/toyworld`"
                )
    return CHECKPOINT, MOTION_MODULE


def available() -> bool:
    """True when the toy-world files are present (without hashing them)."""
    return CHECKPOINT.is_file() and MOTION_MODULE.is_file() and MANIFEST.is_file()
