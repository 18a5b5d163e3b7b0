"""scripts/train_toyworld.py end to end at a few steps per stage: every stage (with the --high-noise refine and
motion_hn stages) runs, the exported files are ordinary SD1.5 / AnimateDiff v2 checkpoints that the pipeline loads
and samples from, the manifest's SHA-256 match, and a rerun skips the finished stages and exports the same bytes."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import train_toyworld  # noqa: E402

from animatezero.pipeline import AnimateZeroPipeline  # noqa: E402

TINY = [
    *("--threads 1 --save-every 1 --pool-clips 2 --high-noise".split()),
    *("--steps-vae 2 --batch-vae 2 --steps-decoder 2 --batch-decoder 1 --steps-unet 2 --batch-unet 2".split()),
    *("--steps-refine 2 --batch-refine 2 --steps-motion 2 --batch-motion 1".split()),
]


def test_trainer_runs_every_stage_and_exports_loadable_files(tmp_path, capsys):
    threads = torch.get_num_threads()
    state, dest = tmp_path / "state", tmp_path / "dest"
    try:
        assert train_toyworld.main([*TINY, "--out", str(state), "--dest", str(dest)]) == 0
        manifest = json.loads((dest / "manifest.json").read_text())
        assert set(manifest["stages"]) == {"vae", "decoder", "unet", "refine", "motion_hn"}
        for name, entry in manifest["files"].items():
            assert train_toyworld.sha256(dest / name) == entry["sha256"]
        pipe = AnimateZeroPipeline.from_single_files(
            dest / train_toyworld.CHECKPOINT_NAME, dest / train_toyworld.MOTION_NAME, default_size=(64, 64)
        )
        pipe.progress = False
        video = pipe.text_to_video("a red circle moving right on a black background", steps=2, num_frames=4, seed=0)
        assert video.frames.shape == (4, 3, 64, 64) and torch.isfinite(video.frames).all()

        capsys.readouterr()
        assert train_toyworld.main([*TINY, "--out", str(state), "--dest", str(dest)]) == 0  # rerun: nothing to train
        assert "resumed at step 2" in capsys.readouterr().out
        again = json.loads((dest / "manifest.json").read_text())
        assert again["files"] == manifest["files"]  # the same bytes
    finally:
        torch.set_num_threads(threads)
