"""Per-frame steps of the object's centroid in a toy-world sweep: where a clip's track breaks (README "Toy world").

For each configuration folder of a sweep run directory, reads every item's saved frames (``<item>/frames``),
detects the object (evaluation/toyworld_metrics.py) and prints the mean step from frame 0 to 1, 1 to 2, 2 to 3 and
the mean of the later steps, over the items (NaN steps, where the object is lost, are left out):

    python scripts/toyworld_steps.py outputs/sweeps/toyworld_ablation ablation1 ablation2 ablation4 ablation5
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.io import read_frame_folder  # noqa: E402
from evaluation.toyworld_metrics import centroid_steps, detect_video  # noqa: E402


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def configuration_steps(folder: Path) -> list[float]:
    """Mean step (px) from frame i to i + 1 over the items of one configuration folder."""
    per_item = [centroid_steps(detect_video(read_frame_folder(d))) for d in sorted(folder.glob("*/frames"))]
    if not per_item:
        raise SystemExit(f"no item frames under {folder} (expected {folder}/<item>/frames/0000.png ...)")
    return [_nanmean([steps[i] for steps in per_item]) for i in range(len(per_item[0]))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a sweep's run directory (one folder per configuration)")
    ap.add_argument("configurations", nargs="+", help="configuration folder names")
    args = ap.parse_args(argv)
    for name in args.configurations:
        steps = configuration_steps(args.run_dir / name)
        later = _nanmean(steps[3:])
        print(f"{name}: 0->1 {steps[0]:.2f}  1->2 {steps[1]:.2f}  2->3 {steps[2]:.2f}  later {later:.2f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
