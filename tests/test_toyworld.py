"""The toy world (evaluation/toyworld.py) and its ground-truth metrics (evaluation/toyworld_metrics.py): the world is
deterministic and well-formed, the detector and motion classifier are right on every rendered class, and junk
(static clips, noise) scores as wrong. Also the held-out prompt set, the ``toyworld`` metric of
``evaluation.evaluate`` and the confidence intervals of ``evaluation.tables``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import configs  # noqa: F401  (registers the Controls schema and ${asset:...} that the configs use)
from evaluation import toyworld as tw
from evaluation import toyworld_metrics as twm
from evaluation.io import write_frames, write_image

ROOT = Path(__file__).resolve().parents[1]


def toyworld_eval_items(n: int = 32) -> list[dict]:
    """The items of configs/prompts/toyworld_eval.yaml: eval_scenes(n) captions, sampling seed 2000 + k."""
    return [{"id": f"tw{k:02d}", "prompt": s.caption, "seed": 2000 + k} for k, s in enumerate(tw.eval_scenes(n))]


def every_class_scene(k: int, motion: str) -> list[tw.Scene]:
    """One scene per (color, shape, background) with color != background (54), with the given motion."""
    out = []
    for color in tw.COLORS:
        for shape in tw.SHAPES:
            for background in tw.BACKGROUNDS:
                if color != background:
                    attrs = {"color": color, "shape": shape, "motion": motion, "background": background}
                    out.append(tw.scene_for(attrs, 100 * k + len(out)))
    return out


# ----------------------------------------------------------------------------------------------- the world


def test_world_is_deterministic_by_seed():
    caption, clip = tw.sample_clip(123)
    caption2, clip2 = tw.sample_clip(123)
    assert caption == caption2 and torch.equal(clip, clip2)
    assert clip.shape == (tw.FRAMES, 3, tw.SIZE, tw.SIZE) and 0 <= clip.min() and clip.max() <= 1
    assert not torch.equal(clip, tw.sample_clip(124)[1])
    assert tw.eval_scenes(4) == tw.eval_scenes(4) and tw.eval_scenes(2, offset=2) == tw.eval_scenes(4)[2:]


def test_captions_parse_and_never_put_an_object_on_its_own_colour():
    captions = tw.all_captions()
    assert len(captions) == len(set(captions)) == 3 * 7 * 3 * 6 - 18 == 360
    for text in captions:
        attrs = tw.parse_caption(text)
        assert attrs is not None and attrs["color"] != attrs["background"]
        assert tw.caption(**attrs) == text
    for k in range(200):  # training scenes and held-out scenes alike
        for scene in (tw.sample_scene(k), tw.eval_scenes(1, offset=k)[0]):
            assert scene.color != scene.background and tw.parse_caption(scene.caption) == {
                "color": scene.color,
                "shape": scene.shape,
                "motion": scene.motion,
                "background": scene.background,
            }
    for outside in (
        "a cat, blinking",
        "a red circle moving left on a red background",
        "a pink circle growing on a black background",
    ):
        assert tw.parse_caption(outside) is None


@pytest.mark.parametrize("motion", tw.MOTIONS)
def test_objects_stay_inside_the_frame(motion):
    """At both ends of the clip (where motion takes an object furthest) no object pixel touches the border."""
    scenes = [
        tw.scene_for({"color": "red", "shape": s, "motion": motion, "background": "black"}, k)
        for k in range(40)
        for s in tw.SHAPES
    ]
    frames = tw.render_batch(scenes + scenes, [0.0] * len(scenes) + [1.0] * len(scenes))  # [n, 3, 64, 64]
    ink = frames.amax(dim=1) > 0  # any coverage at all
    border = torch.cat([ink[:, 0], ink[:, -1], ink[:, :, 0], ink[:, :, -1]], dim=1)
    assert not border.any()
    assert ink.sum(dim=(1, 2)).min() > 50  # every object is there


# ----------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("t, motion", [(0.0, "growing"), (0.0, "shrinking"), (0.5, "moving left")])
def test_detection_gets_every_color_shape_and_background(t, motion):
    """Every (color, shape, background) at the world's smallest size, largest size and a moving size."""
    scenes = every_class_scene(len(motion), motion)
    frames = tw.render_batch(scenes, [t] * len(scenes))
    for scene, d in zip(scenes, twm.detect_video(frames), strict=True):
        assert d.found and (d.color, d.shape, d.background) == (scene.color, scene.shape, scene.background), scene
        x, y, size = scene.at(t)
        assert abs(d.x - x) < 0.5 and abs(d.y - y) < 0.5 and abs(d.radius / size - 1) < 0.06
        assert d.shape_iou > 0.8
    known = twm.detect(frames[0], background=scenes[0].background)
    assert known.found and known.color == scenes[0].color


def test_ground_truth_clips_score_perfectly():
    """24 held-out clips (every motion 4 times, every color and shape): all accuracies 1, frame 0 exact, smooth.
    (Measured once over one clip of each of the 360 captions plus 64 held-out clips, 6,784 frames: every frame's
    color, shape and background right, every motion right, shape IoU >= 0.90.)"""
    scenes = tw.eval_scenes(24)
    assert {s.motion for s in scenes} == set(tw.MOTIONS) and {s.shape for s in scenes} == set(tw.SHAPES)
    for scene in scenes:
        clip = tw.render_clip(scene)
        scores = twm.score_video(clip, scene.caption, reference=clip[0])
        assert twm.classify_motion(twm.detect_video(clip)) == scene.motion
        for key in ("found", "color_acc", "shape_acc", "background_acc", "prompt_acc", "motion_acc"):
            assert scores[f"toyworld_{key}"] == 1.0, (scene.caption, key, scores)
        for key in ("video_color_acc", "video_shape_acc", "consistency"):
            assert scores[f"toyworld_{key}"] == 1.0, (scene.caption, key, scores)
        assert scores["toyworld_frame0_psnr"] == twm.PSNR_CAP_DB
        assert scores["toyworld_track_jerk"] < 0.35  # max 0.30 px measured over 424 rendered clips
        assert scores["toyworld_frame0_jerk"] < 0.35
        if scene.motion in tw.DIRECTIONS:
            dx, dy = tw.DIRECTIONS[scene.motion]
            assert abs(scores["toyworld_motion_dx"] - dx * tw.TRAVEL) < 1.0
            assert abs(scores["toyworld_motion_dy"] - dy * tw.TRAVEL) < 1.0
            assert scores["toyworld_size_change"] < 0.05
        else:
            assert math.isnan(scores["toyworld_size_change"])  # the size is meant to change
            ratio = scene.s1 / scene.s0
            assert abs(scores["toyworld_motion_size_ratio"] / ratio - 1) < 0.06


def test_detection_survives_blur_and_noise():
    """Generated frames are blurry and noisy: Gaussian blur (sigma 1.5 px) plus noise (std 0.05) keeps color,
    background and motion right on 12 held-out clips, shape on >= 95% of frames (measured on 48 clips: colour 100%,
    shape 99.2%, motion 100%; at sigma 2, std 0.08: shape 96.2%)."""
    g = torch.Generator().manual_seed(0)
    taps = torch.exp(-torch.arange(-3, 4, dtype=torch.float32).square() / (2 * 1.5**2))
    kernel = (taps[:, None] * taps[None]).div(taps.sum() ** 2).expand(3, 1, 7, 7)
    shapes_right = frames = 0
    for scene in tw.eval_scenes(12, offset=100):
        clip = torch.nn.functional.conv2d(
            torch.nn.functional.pad(tw.render_clip(scene), (3,) * 4, mode="replicate"), kernel, groups=3
        )
        clip = (clip + 0.05 * torch.randn(clip.shape, generator=g)).clamp(0, 1)
        detections = twm.detect_video(clip)
        assert all(d.color == scene.color and d.background == scene.background for d in detections)
        assert twm.classify_motion(detections) == scene.motion
        shapes_right += sum(d.shape == scene.shape for d in detections)
        frames += len(detections)
    assert shapes_right / frames >= 0.95


def test_wrong_caption_static_clip_and_noise_score_as_wrong():
    scene = tw.eval_scenes(1)[0]  # a red circle moving left
    clip = tw.render_clip(scene)
    wrong = tw.caption("blue", "square", "moving right", "white")
    scores = twm.score_video(clip, wrong)
    for key in ("color_acc", "shape_acc", "background_acc", "prompt_acc", "motion_acc", "video_color_acc"):
        assert scores[f"toyworld_{key}"] == 0.0, key
    assert scores["toyworld_consistency"] == 1.0  # consistency does not look at the caption

    static = clip[:1].expand(tw.FRAMES, -1, -1, -1)
    assert twm.classify_motion(twm.detect_video(static)) == twm.STATIC
    scores = twm.score_video(static, scene.caption)
    assert scores["toyworld_motion_acc"] == 0.0 and scores["toyworld_consistency"] == 1.0
    assert scores["toyworld_size_change"] == 0.0 and scores["toyworld_track_jerk"] == 0.0

    # frame 0 from elsewhere (later frames start 8 px to the right): one break, at frame 0, diluted in the mean jerk
    rolled = torch.cat([clip[:1], clip[1:].roll(8, dims=-1)])
    scores = twm.score_video(rolled, scene.caption)
    assert 7.0 < scores["toyworld_frame0_jerk"] < 9.0 and scores["toyworld_track_jerk"] < 1.0
    steps = twm.centroid_steps(twm.detect_video(rolled))  # the break is the first step: 8 px back, then 1.6 px ones
    assert len(steps) == tw.FRAMES - 1 and 6.0 < steps[0] < 7.0 and all(1.2 < s < 2.0 for s in steps[1:])

    noise = torch.rand(tw.FRAMES, 3, tw.SIZE, tw.SIZE, generator=torch.Generator().manual_seed(0))
    assert not any(d.found for d in twm.detect_video(noise))
    scores = twm.score_video(noise, scene.caption)
    assert scores["toyworld_found"] == 0.0
    for key in ("color_acc", "shape_acc", "prompt_acc", "motion_acc", "consistency"):
        assert scores[f"toyworld_{key}"] == 0.0, key
    bar = torch.zeros(3, tw.SIZE, tw.SIZE)
    bar[0, 30:34, 10:50] = 1.0  # a red bar is an object of no shape of this world
    d = twm.detect(bar)
    assert d.found and d.color == "red" and d.shape is None and d.area == 160.0
    blank = torch.zeros(3, tw.SIZE, tw.SIZE)
    assert not twm.detect(blank).found and twm.detect(blank).background == "black"


def test_caption_free_scores_and_bad_input():
    clip = tw.render_clip(tw.eval_scenes(1)[0])
    scores = twm.score_video(clip, None)
    assert "toyworld_motion_acc" not in scores and scores["toyworld_consistency"] == 1.0
    with pytest.raises(ValueError, match="outside the toy-world grammar"):
        twm.score_video(clip, "a cat, blinking")
    with pytest.raises(ValueError, match=r"\[frames, 3, H, W\]"):
        twm.score_video(clip[0], None)
    with pytest.raises(ValueError, match="differ in size"):
        twm.score_video(clip, None, reference=torch.zeros(3, 32, 32))
    half = tw.render_clip(tw.eval_scenes(1)[0], size=32)  # other sizes work: thresholds scale
    assert twm.score_video(half, tw.eval_scenes(1)[0].caption)["toyworld_motion_acc"] == 1.0


# ----------------------------------------------------------------------------------------------- experiment plumbing


def test_prompt_set_is_the_held_out_scenes():
    data = yaml.safe_load((ROOT / "configs/prompts/toyworld_eval.yaml").read_text())
    assert data["name"] == "toyworld_eval" and data["items"] == toyworld_eval_items(32)
    training_seeds_below = tw.EVAL_SEED_BASE  # eval_scenes draws from seeds at or above it; training below
    assert all(tw.parse_caption(item["prompt"]) for item in data["items"]) and training_seeds_below > 0


def test_ablation_experiment_is_the_toy_world_at_its_own_size():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sweep", ["experiment=toyworld_ablation"])
    assert (cfg.sampler.steps, cfg.sampler.num_frames, cfg.sampler.height, cfg.sampler.width) == (10, 16, 64, 64)
    assert OmegaConf.to_container(cfg.model, resolve=False)["checkpoint"].endswith("toyworld_sd15.safetensors}")
    assert OmegaConf.to_container(cfg.prompts["items"]) == toyworld_eval_items(32)
    assert len(cfg.configurations) == 18  # window 16 = ablation5


def make_toyworld_run(run_dir: Path, scene: tw.Scene, video: torch.Tensor, configuration: str) -> None:
    write_frames(video, run_dir / "frames")
    write_image(video[0], run_dir / "image.png")
    run = {"prompt": scene.caption, "status": "done", "configuration": configuration, "controls": {"share_kv": True}}
    (run_dir / "run.json").write_text(json.dumps(run))


def test_evaluate_toyworld_metric_and_tables_with_confidence_intervals(tmp_path):
    """``metrics=toyworld`` needs no network; a prompt outside the grammar is skipped with its reason; the tables
    show ``mean [CI]``."""
    from evaluation.evaluate import evaluate_sweep

    sweep = tmp_path / "sweep"
    for k, scene in enumerate(tw.eval_scenes(4)):
        clip = tw.render_clip(scene)
        make_toyworld_run(sweep / "good" / f"tw{k:02d}_s{k}", scene, clip, "good")
        make_toyworld_run(sweep / "frozen" / f"tw{k:02d}_s{k}", scene, clip[:1].expand_as(clip), "frozen")
    other = sweep / "other" / "cat_s0"
    make_toyworld_run(other, tw.eval_scenes(1)[0], tw.render_clip(tw.eval_scenes(1)[0]), "other")
    (other / "run.json").write_text(json.dumps({"prompt": "a cat, blinking", "status": "done", "configuration": "x"}))

    rows = evaluate_sweep(sweep, "toyworld")
    assert len(rows) == 9
    result_path = sweep / "good" / "tw00_s0" / "metrics.json"
    result = json.loads(result_path.read_text())
    assert result["metrics"]["toyworld_motion_acc"] == 1.0 and result["meta"]["networks"] == {}
    assert result["metrics"]["toyworld_frame0_psnr"] == twm.PSNR_CAP_DB  # frames and image.png are the same PNG
    skipped = json.loads((other / "metrics.json").read_text())["meta"]["skipped"]
    assert skipped == {"toyworld": "prompt outside the toy-world grammar"}
    frozen = json.loads((sweep / "frozen" / "tw01_s1" / "metrics.json").read_text())["metrics"]
    assert frozen["toyworld_motion_acc"] == 0.0

    # a second evaluation keeps current results; one written before a metric changed (older version, a key missing)
    # is computed again instead of being kept
    kept = sweep / "good" / "tw01_s1" / "metrics.json"
    stale = json.loads(result_path.read_text())
    stale["meta"]["metric_versions"] = {"toyworld": 1}
    del stale["metrics"]["toyworld_frame0_jerk"]
    result_path.write_text(json.dumps(stale))
    before = kept.stat().st_mtime_ns
    evaluate_sweep(sweep, "toyworld")
    assert kept.stat().st_mtime_ns == before
    assert json.loads(result_path.read_text())["metrics"]["toyworld_frame0_jerk"] < 0.35

    from evaluation import tables as make_tables

    assert make_tables.main([str(sweep), "--out", str(tmp_path / "tables")]) == 0
    md = (tmp_path / "tables" / "toyworld_table.md").read_text()
    good = next(line for line in md.splitlines() if line.startswith("| good "))
    frozen_row = next(line for line in md.splitlines() if line.startswith("| frozen "))
    assert "| 4 | 1.0000 [1.0000, 1.0000] | 1.0000 [1.0000, 1.0000] | 1.0000 [1.0000, 1.0000] |" in good
    assert "| 0.0000 [0.0000, 0.0000] |" in frozen_row  # motion accuracy 0 for every prompt
    csv_text = (tmp_path / "tables" / "toyworld_table.csv").read_text()
    assert "toyworld_motion_acc_ci_low" in csv_text

    # the breakdown: motion accuracy by the caption's motion group (a group no caption has is empty), and by attribute
    with open(tmp_path / "tables" / "toyworld_breakdown.csv", newline="") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    present = {s.motion.split()[0] for s in tw.eval_scenes(4)}
    for group in make_tables.TOYWORLD_MOTION_GROUPS:
        good_acc = float(rows["good"][f"toyworld_motion_acc_{group}_mean"])
        frozen_acc = float(rows["frozen"][f"toyworld_motion_acc_{group}_mean"])
        if group in present:
            assert (good_acc, frozen_acc) == (1.0, 0.0)
        else:
            assert math.isnan(good_acc) and math.isnan(frozen_acc)
    assert float(rows["good"]["toyworld_color_consistency_mean"]) == 1.0
    assert "moving" in (tmp_path / "tables" / "toyworld_breakdown.md").read_text()
    s = make_tables._fmt_ci({"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4})
    assert s == "0.5000 [0.2500, 0.7500]"
