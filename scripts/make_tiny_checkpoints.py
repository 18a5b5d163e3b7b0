"""Write tiny random-weight checkpoints with the real SD1.5 / AnimateDiff key layout (``models.synthetic``).

    python scripts/make_tiny_checkpoints.py [--out checkpoints/tiny] [--versions 1 2 3] [--seed 0]

The files load through the same code as the real ones, so the whole pipeline runs on a CPU in seconds:
    animatezero prompt=x checkpoint=checkpoints/tiny/tiny_sd15.safetensors \\
        motion_module=checkpoints/tiny/tiny_mm_v2.ckpt model.device=cpu sampler.steps=2 \\
        sampler.height=64 sampler.width=64 sampler.num_frames=4
(``debug=tiny`` does the same with files it writes on the fly into paths.cache_dir.) The pictures are noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig  # noqa: E402
from models.synthetic import write_motion_module, write_sd15_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("checkpoints/tiny"))
    parser.add_argument("--versions", type=int, nargs="+", default=[2], choices=(1, 2, 3), help="motion versions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp16", action="store_true", help="store float16 tensors (default float32)")
    args = parser.parse_args(argv)
    dtype = torch.float16 if args.fp16 else torch.float32
    args.out.mkdir(parents=True, exist_ok=True)
    sd15 = args.out / "tiny_sd15.safetensors"
    write_sd15_checkpoint(sd15, UNetConfig.tiny(), VAEConfig.tiny(), CLIPTextConfig.tiny(), seed=args.seed, dtype=dtype)
    print(sd15)
    for version in args.versions:
        path = args.out / f"tiny_mm_v{version}.ckpt"
        write_motion_module(path, MotionConfig.tiny(version), seed=args.seed + version, dtype=dtype)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
