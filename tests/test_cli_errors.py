"""What the three entry points (animatezero, experiments.sweep, experiments.evaluate) answer to bad input: one line
with exit status 2 that names the key, before any weights load, with nothing left on disk; --help; prompts taken
as typed; a run that fails later keeps a failed run.json; sweep summaries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from experiments import cli
from experiments import evaluate as ev
from experiments import generate as gen
from experiments import sweep as sw
from tests.console import run_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"



# ------------------------------------------------------------------------------------------------- CLI errors
BAD = [
    (["seed=abc"], "seed=abc is not a whole number"),
    (["seed=1.5"], "seed=1.5 is not a whole number"),
    ([f"seed={2**64}"], "out of range"),
    (["end_seed=-1"], "end_seed=-1 is out of range"),
    (["candidates=-2"], "candidates=-2 is out of range"),
    (["extend=x"], "extend=x is not a whole number"),
    (["steps=0"], "steps=0 is out of range"),
    (["sampler.steps=0"], "steps=0 is out of range"),
    (["frames=0"], "frames=0 is out of range"),
    (["size=100"], "size=100 must be a multiple of 64"),
    (["size=big"], "size=big is not a size"),
    (["guidance=nan"], "guidance=nan must be a number"),
    (["sampler.fps=0"], "sampler.fps=0 is out of range"),
    (["wandb.mode=loud"], "wandb.mode=loud is not a W&B mode"),
    (["model.device=cuda:7"], None),  # no CUDA here: one line; with CUDA the tiny run would go on
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_one_line_exit_2_nothing_on_disk(args, message, tiny_cache, tmp_path, monkeypatch, capsys):
    import torch

    if args[0].startswith("model.device") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)
    argv = ["animatezero", "prompt=x", "debug=tiny", f"paths.cache_dir={tiny_cache}", *args]
    code, _, err = run_main(gen.main, argv, monkeypatch, capsys)
    assert code == 2 and err.startswith("animatezero: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and (message is None or message in err), err
    assert list(tmp_path.iterdir()) == []  # no run folder, no .hydra/, no log file


def test_checkpoint_directory_and_missing_local_path_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    code, _, err = run_main(gen.main, ["animatezero", "prompt=x", "checkpoint=weights"], monkeypatch, capsys)
    assert code == 2 and "checkpoint=weights is a directory" in err and "Traceback" not in err
    argv = ["animatezero", "prompt=x", "motion_module=weights/org/mm.ckpt"]  # weights/ exists: local, not the hub
    code, _, err = run_main(gen.main, argv, monkeypatch, capsys)
    assert code == 2 and "motion_module=weights/org/mm.ckpt does not exist" in err
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]


def test_a_run_failing_later_keeps_its_failed_run_json_only(tiny_cache, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("the pipeline refused this")

    # sampling fails after the run folder exists (the weights are loaded before it: a load failure leaves nothing)
    monkeypatch.setattr(gen, "image_and_video", broken)
    monkeypatch.chdir(tmp_path)
    argv = ["animatezero", "prompt=x", "debug=tiny", f"paths.cache_dir={tiny_cache}", "out_dir=run"]
    code, _, err = run_main(gen.main, argv, monkeypatch, capsys)
    assert code == 2 and "the pipeline refused this" in err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "refused" in run["error"]


def test_help_lists_the_options_and_only_accepted_groups(monkeypatch, capsys):
    code, out, _ = run_main(gen.main, ["animatezero", "--help"], monkeypatch, capsys)
    assert code == 0
    for option in ("prompt=", "seed=", "steps=", "frames=", "size=", "guidance=", "checkpoint=", "motion_module="):
        assert option in out
    for group in ("controls", "model", "motion", "sampler", "debug"):
        assert f"  {group} " in out or f"  {group}  " in out
    assert "experiment" not in out and "prompts " not in out  # groups animatezero does not take
    for group in ("controls", "model", "motion", "sampler", "debug"):  # every option of the groups it does take
        for option in sorted((CONFIGS / group).glob("*.yaml")):
            assert option.stem in out, f"--help does not list {group}={option.stem}"


def test_size_shortcut():
    assert cli.parse_size(512) == (512, 512)
    assert cli.parse_size("768x512") == (512, 768)  # width x height -> (height, width)


def test_out_dir_check_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    assert cli.check_out_dir(target) == target
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- the CLI on tiny weights
def cli_run(argv: list[str], tmp_path: Path, tiny_cache: Path, monkeypatch) -> Path:
    """Run the ``animatezero`` console script as typed in a shell; returns the run directory."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from experiments import generate as gen

    run_dir = tmp_path / "run"
    argv = ["animatezero", "debug=tiny", f"paths.cache_dir={tiny_cache}", *argv, f"out_dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        gen.main()
    finally:
        GlobalHydra.instance().clear()
    return run_dir


@pytest.mark.parametrize("prompt", ["draw ${oc.env:SECRET_TOKEN}", "price $5 ${", "a \\${x} and ${y}"])
def test_prompts_are_taken_as_typed(tmp_path, tiny_cache, monkeypatch, prompt):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    run_dir = cli_run(
        [f"prompt={prompt}", "sampler.num_frames=2", "controls=animatediff"], tmp_path, tiny_cache, monkeypatch
    )
    text = (run_dir / "run.json").read_text()
    run = json.loads(text)
    assert run["status"] == "done" and run["prompt"] == prompt and run["config"]["prompt"] == prompt
    assert "hunter2" not in text


def test_nan_frames_make_a_failed_run_with_the_reason(tmp_path, tiny_cache, monkeypatch):
    from models.runner import UNetRunner

    monkeypatch.setattr(UNetRunner, "__call__", lambda self, x, t, context: torch.full_like(x, float("nan")))
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["prompt=x", "sampler.num_frames=2", "controls=animatediff"], tmp_path, tiny_cache, monkeypatch)
    assert exit_info.value.code == 2
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and run["error"].startswith("NonFiniteError: sampling produced NaN")
    assert "quick_metrics" not in run and not (tmp_path / "run" / "video.mp4").exists()


@pytest.mark.parametrize(
    "override, match",
    [
        ("paths.run_files.gif=frames/x.gif", "lies inside paths.run_files.frames"),
        ("candidates=-1", "candidates"),
        ("extend=-1", "extend"),
        ("seed=1.5", "seed"),
        ("sampler.fps=-5", "fps"),
        ("sampler.guidance_scale=inf", "guidance"),
    ],
)
def test_bad_cli_values_fail_before_any_weights_are_loaded(tmp_path, tiny_cache, monkeypatch, capsys, override, match):
    from experiments import common

    monkeypatch.setattr(common, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights despite a bad value"))
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["prompt=x", override], tmp_path, tiny_cache, monkeypatch)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and match in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------- sweep, evaluate
def test_sweep_with_other_settings_is_one_line(tiny_cache, tmp_path, monkeypatch, capsys):
    item = tmp_path / "sw" / "paper" / "cat_s1"  # prompts=smoke: id cat, seed 1
    item.mkdir(parents=True)
    (item / "run.json").write_text(json.dumps({"status": "done", "fingerprint": "made with other settings"}))
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tiny_cache}", "sweep_dir=sw"]
    code, _, err = run_main(sw.main, argv, monkeypatch, capsys)
    assert code == 2 and "was made with other settings" in err and "Traceback" not in err


def test_sweep_prints_a_summary(tiny_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tiny_cache}", "sweep_dir=sw", "shard.count=99"]
    code, out, err = run_main(sw.main, argv, monkeypatch, capsys)
    assert code in (0, None), err
    assert "[sweep] summary: 1 done, 0 skipped (already done), 0 failed, 0 not run" in out
    code, out, _ = run_main(sw.main, argv, monkeypatch, capsys)  # resumed: nothing left to do
    assert "[sweep] summary: 0 done, 1 skipped (already done), 0 failed" in out


def test_evaluate_errors_are_one_line_and_open_no_wandb(tmp_path, monkeypatch, capsys):
    from evaluation import evaluate as evaluation
    from evaluation.extractors import EvaluatorUnavailable
    from experiments.runs import WandbRun

    code, _, err = run_main(ev.main, ["evaluate", f"run_dir={tmp_path / 'nope'}"], monkeypatch, capsys)
    assert code == 2 and "is not a directory" in err and "Traceback" not in err

    (tmp_path / "run.json").write_text("{}")

    def unavailable(*args, **kwargs):
        raise EvaluatorUnavailable("CLIP weights are not cached and downloads are off")

    monkeypatch.setattr(evaluation, "evaluate_run", unavailable)
    monkeypatch.setattr(WandbRun, "start", classmethod(lambda cls, **k: pytest.fail("W&B opened for a failed run")))
    code, _, err = run_main(ev.main, ["evaluate", f"run_dir={tmp_path}"], monkeypatch, capsys)
    assert code == 2 and "CLIP weights are not cached" in err and err.count("\n") == 1


def test_default_run_dir_is_taken_when_the_job_runs(tmp_path):
    a = cli.default_run_dir(tmp_path, "generate")
    time.sleep(0.001)
    b = cli.default_run_dir(tmp_path, "generate")
    assert a != b and a.parent == b.parent and a.parent.parent == tmp_path / "generate"


@pytest.mark.parametrize("bad, message", [("steps=0", "steps=0 is out of range"), ("repeats=0", "repeats=0")])
def test_sweep_bad_values_one_line_nothing_on_disk(bad, message, tiny_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tiny_cache}", "sweep_dir=sw", bad]
    code, _, err = run_main(sw.main, argv, monkeypatch, capsys)
    assert code == 2 and err.startswith("python -m experiments.sweep: error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_sweep_summary_on_ctrl_c(tiny_cache, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from animatezero.pipeline import AnimateZeroPipeline

    monkeypatch.setattr(AnimateZeroPipeline, "animate", interrupted)  # Ctrl-C during the first item's step 2
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tiny_cache}", "sweep_dir=sw", "shard.count=99"]
    with pytest.raises(KeyboardInterrupt):
        run_main(sw.main, argv, monkeypatch, capsys)
    out = capsys.readouterr().out
    assert "[sweep] interrupted: 0 done, 0 skipped (already done), 0 failed, 1 not run" in out
    assert "run the same command again to resume" in out


@pytest.mark.parametrize(
    "main, argv, suggestion",
    [
        (gen.main, ["animatezero", "prompt=x", "stepz=3"], "steps"),
        (sw.main, ["sweep", "sweepdir=x"], "sweep_dir"),
        (ev.main, ["evaluate", "rundir=x"], "run_dir"),
    ],
)
def test_unknown_option_is_one_line_with_a_suggestion(main, argv, suggestion, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(main, argv, monkeypatch, capsys)
    assert code == 2 and "unknown option" in err and suggestion in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_sweep_refuses_colliding_output_names_before_any_work(tmp_path, tiny_cache, monkeypatch, capsys):
    """The sweep's OutputPathError reaches the user as one line and exit status 2, before weights are touched."""

    from experiments import common
    from experiments import sweep as sw

    monkeypatch.setattr(common, "ensure_synthetic", lambda *a, **k: pytest.fail("work started"))
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tiny_cache}", f"sweep_dir={tmp_path / 's'}"]
    code, _, err = run_main(sw.main, [*argv, "paths.run_files.gif=frames/x.gif"], monkeypatch, capsys)
    assert code == 2 and "lies inside paths.run_files.frames" in err and "Traceback" not in err
