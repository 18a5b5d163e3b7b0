"""A frame strip of the shipped toy-world model for the README: for a few prompts, the AnimateZero clip's frames
0, 3, 6, 9, 12, 15 (frame 0 is the step-1 image), upscaled 2x with nearest neighbour.

    python scripts/toyworld_strip.py --out docs/toyworld_strip.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from animatezero.io import save_image  # noqa: E402
from animatezero.pipeline import AnimateZeroPipeline  # noqa: E402

PROMPTS = (
    "a red circle moving right on a black background",
    "a yellow square moving up on a gray background",
    "a blue triangle moving left on a white background",
    "a green circle growing on a black background",
    "a magenta square shrinking on a white background",
    "a cyan triangle moving down on a gray background",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/toyworld_strip.png"))
    ap.add_argument("--steps", type=int, default=10)  # the toy world's configured (and measured) step count
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pipe = AnimateZeroPipeline.toyworld()
    pipe.progress = False
    rows = []
    for k, prompt in enumerate(PROMPTS):
        _, video = pipe.generate(prompt, steps=args.steps, seed=args.seed + k)
        frames = video.frames[::3]  # [6, 3, 64, 64]
        pad = F.pad(frames, (2, 2, 2, 2), value=1.0)  # a white gutter between frames
        rows.append(torch.cat(list(pad), dim=2))  # [3, 68, 6 * 68]
    strip = torch.cat(rows, dim=1)  # [3, rows * 68, 6 * 68]
    strip = F.interpolate(strip[None], scale_factor=2, mode="nearest")[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(strip, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
