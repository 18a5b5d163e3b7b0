"""End to end on CPU with tiny synthetic weights: a 2 prompts x 2 configurations sweep (AnimateDiff vs AnimateZero)
-> evaluation with injected toy evaluator networks (no downloads) -> tables; then resuming after interruptions, and a
Hydra multirun over a controls field into the same sweep."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from evaluation.evaluate import Networks
from evaluation.tables import main as tables_main
from experiments import common
from experiments import evaluate as ev
from experiments import sweep as sw
from tests.sweeps import sweep_cfg

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CONFIGURATIONS = "configurations={animatediff:{preset:animatediff},paper:{preset:paper}}"


class ToyClip:
    """Image embedding: per-channel mean/std and a 2x2 pooled thumbnail; text embedding: a seeded random vector."""

    meta = {"name": "toy-clip", "weights": "none"}

    def encode_image(self, images):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)
        return torch.cat([images.mean((2, 3)), images.std((2, 3)), pooled], 1)

    def encode_text(self, texts):
        return torch.stack([torch.randn(18, generator=torch.Generator().manual_seed(len(t))) for t in texts])


def toy_networks():
    return Networks(
        clip=ToyClip(),
        flow=lambda a, b: torch.zeros(a.shape[0], 2, *a.shape[-2:]),
        style=lambda x: [x, torch.nn.functional.avg_pool2d(x, 2)],
        lpips=lambda a, b: (a - b).square().mean((1, 2, 3)),
    )




@pytest.fixture
def calls(monkeypatch):
    """Counts of pipeline loads, step-1 images and step-2 videos (prompt, plain AnimateDiff?) made by the sweep: every
    video comes from the one dispatch, ``pipe.animate``."""
    counts = {"load_pipeline": 0, "make_image": 0, "make_video": []}
    real_load = common.load_pipeline

    def step_two(method):  # plain: AnimateDiff text-to-video (every control off)
        def call(image, *a, **k):
            counts["make_video"].append((image.prompt, not k["controls"].any))
            if counts.get("interrupt_at") == len(counts["make_video"]):
                raise KeyboardInterrupt
            return method(image, *a, **k)

        return call

    def load_pipeline(*a, **k):
        counts["load_pipeline"] += 1
        pipe = real_load(*a, **k)
        text_to_image = pipe.text_to_image

        def make_image(*a, **k):
            counts["make_image"] += 1
            return text_to_image(*a, **k)

        pipe.text_to_image = make_image
        pipe.animate = step_two(pipe.animate)
        return pipe

    monkeypatch.setattr(common, "load_pipeline", load_pipeline)
    return counts


def item_dirs(root):
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("run.json"))


ITEMS = ["animatediff/cat_s1", "animatediff/waves_s2", "paper/cat_s1", "paper/waves_s2"]


def test_sweep_evaluate_tables_and_resume(tmp_path, tiny_cache, calls):
    root = tmp_path / "sweep"
    cfg = sweep_cfg(tiny_cache, root, CONFIGURATIONS)

    # 1. The sweep: every item complete, the step-1 image made once per prompt.
    sw.sweep(cfg)
    assert item_dirs(root) == ITEMS
    assert calls["make_image"] == 2 and len(calls["make_video"]) == 4
    for item in ITEMS:
        run = json.loads((root / item / "run.json").read_text())
        assert run["status"] == "done" and run["configuration"] == item.split("/")[0]
        assert run["mode"] == ("animatediff" if item.startswith("animatediff") else "animatezero")
        assert len(list((root / item / "frames").glob("*.png"))) == 4
        assert {"image.png", "video.mp4", "video.gif"} <= {p.name for p in (root / item).iterdir()}
    assert not list(root.rglob(".*.*"))  # no temporary folders left behind

    # 2. Evaluation with injected toy networks, then the tables.
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        ecfg = compose("evaluate", overrides=[f"run_dir={root}", "wandb.mode=disabled"])
    summary = ev.evaluate(ecfg, networks=toy_networks())
    assert set(summary) == {"configuration=animatediff", "configuration=paper"}
    csv_text = (root / "metrics.csv").read_text()
    assert csv_text.count("\n") == 5 and "text_sim" in csv_text and "warping_error" in csv_text
    paper_psnr = json.loads((root / "paper/cat_s1/metrics.json").read_text())["metrics"]["first_frame_psnr"]
    assert paper_psnr > 40  # latent insertion reproduces the image in frame 0

    tables = tmp_path / "tables"
    assert tables_main([str(root), "--out", str(tables)]) == 0
    for stem in ("t2v_table", "ablation_table", "first_frame_fidelity"):
        md, csv = (tables / f"{stem}.md").read_text(), (tables / f"{stem}.csv").read_text()
        for label in ("animatediff", "paper"):
            assert f"| {label} |" in md and f"\n{label}," in csv
    assert "Text-Sim" in (tables / "t2v_table.md").read_text() and "toy-clip" in (tables / "t2v_table.md").read_text()
    from PIL import Image

    strips = Image.open(tables / f"frame_strips_{root.name}.png")
    assert strips.height > 2 * 64 and strips.width > 4 * 64  # two rows of four frames

    # 3. Rerunning finds everything done: no model is even loaded.
    mtimes = {item: (root / item / "run.json").stat().st_mtime_ns for item in ITEMS}
    calls["make_video"].clear()
    sw.sweep(cfg)
    assert calls["load_pipeline"] == 1 and calls["make_video"] == []

    # 4. An item without run.json and one marked unfinished are redone, and only they.
    (root / "paper/cat_s1/run.json").unlink()
    marked = json.loads((root / "animatediff/waves_s2/run.json").read_text())
    (root / "animatediff/waves_s2/run.json").write_text(json.dumps({**marked, "status": "running"}))
    sw.sweep(cfg)
    assert sorted(calls["make_video"]) == [("a cat, blinking", False), ("waves hit the beach", True)]
    assert item_dirs(root) == ITEMS
    for item in ("animatediff/cat_s1", "paper/waves_s2"):
        assert (root / item / "run.json").stat().st_mtime_ns == mtimes[item]
    assert json.loads((root / "paper/cat_s1/run.json").read_text())["status"] == "done"

    # 5. Ctrl-C in the middle loses nothing finished; the same command then completes the rest.
    for item in ("animatediff/cat_s1", "paper/cat_s1"):
        (root / item / "run.json").unlink()
    calls["make_video"].clear()
    calls["interrupt_at"] = 2
    with pytest.raises(KeyboardInterrupt):
        sw.sweep(cfg)
    assert item_dirs(root) == ["animatediff/cat_s1", "animatediff/waves_s2", "paper/waves_s2"]
    assert not list(root.rglob(".*.*"))
    calls["make_video"].clear()
    calls.pop("interrupt_at")
    sw.sweep(cfg)
    assert calls["make_video"] == [("a cat, blinking", False)] and item_dirs(root) == ITEMS

    # 6. Other settings in the same sweep directory are an error, not a silent mix (checked before loading).
    loads = calls["load_pipeline"]
    with pytest.raises(ValueError, match="other settings"):  # a ConfigError: one line, exit 2
        sw.sweep(sweep_cfg(tiny_cache, root, CONFIGURATIONS, "sampler.steps=1"))
    assert calls["load_pipeline"] == loads


def test_hydra_multirun_over_a_controls_field(tmp_path, tiny_cache, monkeypatch):
    root = tmp_path / "sweep"
    argv = [
        "sweep",
        "-m",
        "debug=tiny",
        "prompts=smoke",
        "shard.count=2",
        "shard.index=0",  # the first prompt only
        "sampler.steps=1",
        f"paths.cache_dir={tiny_cache}",
        f"sweep_dir={root}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "controls.window_size=2,4",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        sw.main()
    finally:
        GlobalHydra.instance().clear()
    assert item_dirs(root) == ["paper+window_size=2/cat_s1", "paper+window_size=4/cat_s1"]
    run = json.loads((root / "paper+window_size=4/cat_s1/run.json").read_text())
    assert run["controls"]["window_size"] == 4 and run["config"]["controls"]["name"] == "paper+window_size=4"


def test_bad_prompt_ids_and_labels_are_rejected(tmp_path, tiny_cache):
    from experiments.runs import OutputPathError

    cfg = sweep_cfg(tiny_cache, tmp_path, "prompts.items=[{id: ../up, prompt: x, seed: 1}]")
    with pytest.raises(OutputPathError, match="prompt id"):
        sw.sweep(cfg)
    cfg = sweep_cfg(tiny_cache, tmp_path, "configurations={../evil:{preset:paper}}")
    with pytest.raises(OutputPathError, match="configuration label"):
        sw.sweep(cfg)


def test_a_later_controls_field_at_its_default_keeps_old_fingerprints():
    """A field added to Controls after sweeps were saved (``LATER_FIELDS``) is left out of the fingerprint at its
    default, so a sweep saved before it existed resumes instead of every item being redone."""
    from dataclasses import asdict

    from animatezero.controls import Controls

    before = {k: v for k, v in asdict(Controls()).items() if k not in Controls.LATER_FIELDS}
    assert common.fingerprint(Controls().fingerprint_fields()) == common.fingerprint(before)
    assert Controls(noise_share=0.5).fingerprint_fields()["noise_share"] == 0.5
