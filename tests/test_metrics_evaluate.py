"""``evaluation.io`` and ``evaluation.evaluate`` on fake run directories, with injected toy networks."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation import PSNR_CAP_DB
from evaluation import extractors as ex
from evaluation.evaluate import ALL_METRICS, EvalConfig, Networks, evaluate_run, evaluate_sweep, find_runs
from evaluation.io import read_image, read_video, to_uint8, write_frames, write_image
from tests.console import run_main


class ToyEncoder:
    """Image embedding = mean RGB; text: 'red' -> (1, 0, 0), anything else -> (0, 1, 0). Counts calls."""

    def __init__(self):
        self.calls = 0

    def encode_image(self, images):
        self.calls += 1
        return images.mean(dim=(2, 3))

    def encode_text(self, texts):
        self.calls += 1
        return torch.tensor([[1.0, 0.0, 0.0] if t == "red" else [0.0, 1.0, 0.0] for t in texts])


def zero_flow(a, b):
    return torch.zeros(a.shape[0], 2, *a.shape[-2:])


def toy_style(images):
    return [images, F.avg_pool2d(images, 2)]


def toy_lpips(a, b):
    return (a - b).abs().mean(dim=(1, 2, 3))


def toy_networks(encoder=None):
    return Networks(clip=encoder or ToyEncoder(), flow=zero_flow, style=toy_style, lpips=toy_lpips)


def quantized(x):
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2).float() / 255


def make_run(run_dir, *, prompt="red", frames=None, run_extra=None, video_as=None):
    """A run directory as the pipeline writes it: run.json, image.png (= frame 0) and frames/ or a video file."""
    if frames is None:
        g = torch.Generator().manual_seed(len(str(run_dir)))
        frames = torch.rand(4, 3, 16, 16, generator=g) * 0.2
        frames[:, 0] += 0.8  # reddish
    run_dir.mkdir(parents=True)
    write_image(frames[0], run_dir / "image.png")
    if video_as is None:
        write_frames(frames, run_dir / "frames")
    elif video_as == "gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in to_uint8(frames)]
        images[0].save(run_dir / "video.gif", save_all=True, append_images=images[1:], duration=125, loop=0)
    run = {"prompt": prompt, **(run_extra or {})}
    (run_dir / "run.json").write_text(json.dumps(run))
    return quantized(frames)


# ----------------------------------------------------------------------------------------------- io


def test_png_folder_and_image_round_trip(tmp_path):
    video = torch.rand(3, 3, 8, 10)
    write_frames(video, tmp_path / "frames")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    back = read_video(tmp_path / "frames")
    assert back.shape == (3, 3, 8, 10) and torch.equal(back, quantized(video))
    write_image(video[1], tmp_path / "x.png")
    assert torch.equal(read_image(tmp_path / "x.png"), quantized(video[1:2]))


def test_gif_and_mp4_decode(tmp_path):
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    video = colors.view(3, 3, 1, 1).expand(3, 3, 32, 32).contiguous()  # three solid frames: exact in a GIF palette
    make_run(tmp_path / "g", frames=video, video_as="gif")
    assert torch.equal(read_video(tmp_path / "g" / "video.gif"), video)

    import av

    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in to_uint8(video):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    decoded = read_video(path)
    assert decoded.shape == (3, 3, 32, 32)
    assert (decoded - video).abs().mean() < 0.1  # lossy codec, right colours in the right order


# ----------------------------------------------------------------------------------------------- one run


def test_evaluate_run_writes_metrics_json(tmp_path):
    frames = make_run(tmp_path / "run")
    result = evaluate_run(tmp_path / "run", networks=toy_networks())
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == result
    m = result["metrics"]
    expected = {
        "text_sim", "text_sim_wo_f0", "domain_sim", "domain_sim_wo_f0", "style_dist", "style_dist_wo_f0",
        "warping_error", "warping_error_wo_f0", "motion", "motion_wo_f0", "dynamic", "frame_consistency",
        "frame_consistency_wo_f0", "frame_consistency_all_pairs", "frame_consistency_all_pairs_wo_f0",
        "first_frame_psnr", "first_frame_ssim", "first_frame_lpips",
    }  # fmt: skip
    assert set(m) == expected
    # exact values from the toy networks
    emb = F.normalize(frames.mean(dim=(2, 3)).double(), dim=-1)
    assert m["text_sim"] == pytest.approx(float(emb[:, 0].mean()))
    assert m["text_sim_wo_f0"] == pytest.approx(float(emb[1:, 0].mean()))
    assert m["domain_sim"] == pytest.approx(float((emb @ emb[0]).mean()))
    assert m["first_frame_psnr"] == PSNR_CAP_DB and m["first_frame_ssim"] == pytest.approx(1.0)
    assert m["first_frame_lpips"] == 0.0 and m["motion"] == 0.0 and m["dynamic"] == 0.0
    we = [float((frames[t] - frames[t + 1]).square().mean()) for t in range(3)]
    assert m["warping_error"] == pytest.approx(np.mean(we)) and m["warping_error_wo_f0"] == pytest.approx(
        np.mean(we[1:])
    )
    assert result["per_frame"]["style_dist"][0] == 0.0 and len(result["per_frame"]["warping_error"]) == 3
    meta = result["meta"]
    assert meta["video_source"] == "frames/" and meta["num_frames"] == 4 and meta["reference_images"] == ["image.png"]
    assert meta["networks"]["clip"] == {"name": "ToyEncoder", "weights": "injected"}
    assert meta["networks_injected"] == ["clip", "flow", "lpips", "style"]
    assert not list((tmp_path / "run").glob(".*tmp"))  # the atomic write left no temp file


def test_evaluate_run_reference_images_subset_and_missing_prompt(tmp_path):
    make_run(tmp_path / "run", prompt=None, run_extra={"reference_images": ["refs/a.png"]})
    (tmp_path / "run" / "refs").mkdir()
    write_image(torch.zeros(3, 16, 16), tmp_path / "run" / "refs" / "a.png")  # black: zero embedding direction
    result = evaluate_run(tmp_path / "run", metrics="text_sim,style_dist", networks=toy_networks(), write=False)
    assert set(result["metrics"]) == {"style_dist", "style_dist_wo_f0"}
    assert result["meta"]["skipped"] == {"text_sim": "run.json has no prompt"}
    assert result["meta"]["reference_images"] == ["refs/a.png"]
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_run(tmp_path / "run", metrics=["fvd"], networks=toy_networks())


def test_evaluate_run_reads_a_gif_when_there_are_no_frames(tmp_path):
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    make_run(tmp_path / "run", frames=colors.view(2, 3, 1, 1).expand(2, 3, 16, 16).contiguous(), video_as="gif")
    result = evaluate_run(tmp_path / "run", metrics=["text_sim", "frame_consistency"], networks=toy_networks())
    assert result["meta"]["video_source"] == "video.gif"
    assert result["metrics"]["text_sim"] == pytest.approx(0.5)
    assert result["metrics"]["frame_consistency"] == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------------- sweeps


def test_evaluate_sweep_writes_csv_and_skips_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "az" / "seed0", run_extra={"seed": 0, "overrides": ["controls=animatezero", "+sampler.steps=25"]})
    make_run(sweep / "az" / "seed1", run_extra={"seed": 1, "overrides": ["controls=animatezero", "+sampler.steps=25"]})
    make_run(sweep / "base" / "seed0", run_extra={"seed": 0, "config": {"controls": {"name": "none"}, "steps": 25}})
    (sweep / "broken").mkdir()
    (sweep / "broken" / "run.json").write_text('{"prompt": "red"}')  # no frames: logged, left out
    assert [p.relative_to(sweep).as_posix() for p in find_runs(sweep)] == [
        "az/seed0",
        "az/seed1",
        "base/seed0",
        "broken",
    ]

    enc = ToyEncoder()
    rows = evaluate_sweep(sweep, networks=toy_networks(enc), group_by=["controls"])
    assert [r["run"] for r in rows] == ["az/seed0", "az/seed1", "base/seed0"]
    with open(sweep / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["az/seed0", "az/seed1", "base/seed0"]
    assert table[0]["controls"] == "animatezero" and table[0]["sampler.steps"] == "25" and table[1]["seed"] == "1"
    assert table[2]["controls.name"] == "none" and table[2]["steps"] == "25" and table[2]["prompt"] == "red"
    assert float(table[1]["text_sim"]) == pytest.approx(rows[1]["text_sim"])
    header = list(table[0])
    assert header[0] == "run" and header.index("text_sim") > header.index("controls")
    assert (
        header.index("motion")
        < header.index("motion_wo_f0")
        < header.index("dynamic")
        < header.index("first_frame_psnr")
    )
    summary = json.loads((sweep / "metrics_summary.json").read_text())
    assert summary["num_runs"] == 3 and "broken" in summary["failures"]
    az = summary["groups"]["controls=animatezero"]["text_sim"]
    assert az["n"] == 2 and az["ci_low"] <= az["mean"] <= az["ci_high"]

    # a rerun skips finished runs: no network call, metrics.json untouched, same CSV rows
    calls, mtime = enc.calls, (sweep / "az" / "seed0" / "metrics.json").stat().st_mtime_ns
    rows_again = evaluate_sweep(sweep, networks=toy_networks(enc))
    assert enc.calls == calls and (sweep / "az" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime
    assert [r["text_sim"] for r in rows_again] == [r["text_sim"] for r in rows]
    # asking for fewer metrics is covered by the existing files; force recomputes
    evaluate_sweep(sweep, metrics=["text_sim"], networks=toy_networks(enc))
    assert enc.calls == calls
    evaluate_sweep(sweep, metrics=["text_sim"], networks=toy_networks(enc), force=True)
    assert enc.calls > calls
    assert set(json.loads((sweep / "az" / "seed0" / "metrics.json").read_text())["metrics"]) == {
        "text_sim",
        "text_sim_wo_f0",
    }


# ----------------------------------------------------------------------------------------------- CLI and offline


def run_cli(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """``python -m experiments.evaluate ARGS`` (the one command line for metrics) -> (exit status, stdout, stderr)."""
    from experiments import evaluate as cli

    return run_main(cli.main, ["python -m experiments.evaluate", *args, "wandb.mode=disabled"], monkeypatch, capsys)


def test_cli_reports_missing_weights_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("download attempted"))
    ex.clear_cache()
    make_run(tmp_path / "run")
    code, _, err = run_cli([f"run_dir={tmp_path / 'run'}", "metrics=motion", "eval.device=cpu"], monkeypatch, capsys)
    assert code == 2
    assert "raft_large_C_T_V1-22a6c225.pth" in err and str(tmp_path / "torch") in err
    assert not (tmp_path / "run" / "metrics.json").exists()
    ex.clear_cache()


def test_cli_computes_weight_free_metrics_and_respects_existing_results(tmp_path, monkeypatch, capsys):
    make_run(tmp_path / "run")
    monkeypatch.setattr(ex, "lpips_alex", lambda **kwargs: toy_lpips)  # the one network first_frame needs
    args = [f"run_dir={tmp_path / 'run'}", "metrics=first_frame"]
    code, out, _ = run_cli([*args, "eval.device=cpu"], monkeypatch, capsys)
    assert code == 0
    assert json.loads(out[out.index("{") :])["first_frame_psnr"] == PSNR_CAP_DB
    code, out, _ = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "exists" in out


def test_defaults_match_metrics_md():
    config = EvalConfig()
    assert (config.clip_model, config.clip_pretrained) == ("ViT-L-14", "openai")
    assert (config.flow_model, config.flow_weights, config.flow_updates) == ("raft_large", "C_T_V1", 12)
    assert (config.style_variant, config.style_size) == ("gram_relu", 256)
    assert ALL_METRICS[:4] == ("text_sim", "domain_sim", "style_dist", "warping_error")
    assert math.isclose(ex.OPENAI_CLIP_MEAN[0], 0.48145466) and ex.VGG19_RELU_LAYERS == (1, 6, 11, 20, 29)
