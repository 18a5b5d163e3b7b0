"""What a new user meets first: local paths versus hub references, the offline first run (one message naming every
missing file, one connectivity check), one-line errors with exit status 2 that leave nothing on disk, ``--help``,
the top-level shortcuts, progress bars in the Python API, and sweep/evaluate errors and summaries. No network: the
hub and the connection are simulated with monkeypatching."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from animatezero import hub
from experiments import cli
from experiments import evaluate as ev
from experiments import generate as gen
from experiments import sweep as sw
from tests.console import run_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "animatezero_tiny_cache"


# ------------------------------------------------------------------------------------------------- local or hub
def test_local_paths_are_never_hub_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "sub").mkdir(parents=True)
    local = [
        "/abs/org/repo/file.safetensors",
        "./org/repo/file.safetensors",
        "../org/repo/file.safetensors",
        "~/org/repo/file.safetensors",
        "C:/models/x/file.safetensors",
        "models\\x\\file.safetensors",
        "model.safetensors",
        "dir/model.safetensors",  # two parts: never a hub file
        "checkpoints/sub/model.safetensors",  # first part exists here
    ]
    for ref in local:
        assert hub.hub_reference(ref) is None, ref
    assert hub.hub_reference("org/repo/file.ckpt@abc") == ("org/repo", "file.ckpt", "abc")
    assert hub.hub_reference("hf://checkpoints/sub/model.safetensors") == ("checkpoints/sub", "model.safetensors", None)
    with pytest.raises(ValueError, match="hf://org/repo"):
        hub.hub_reference("hf://only/two")


def test_missing_directory_and_unreadable_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^checkpoint=models/x/y.safetensors does not exist"):
        hub.resolve("models/x/y.safetensors")  # looks like org/repo/file, but models/ is here: local, not the hub
    with pytest.raises(IsADirectoryError, match="is a directory; pass the .safetensors/.ckpt file inside it"):
        hub.resolve(str(tmp_path / "models"), key="motion_module")
    f = tmp_path / "w.ckpt"
    f.write_bytes(b"x")
    real_open = open

    def refuse(path, *a, **k):
        if Path(path) == f:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(PermissionError, match="cannot be read .*Permission denied"):
        hub.local_file(f, "checkpoint")


def test_every_local_problem_is_reported_at_once(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        hub.resolve_all({"checkpoint": str(tmp_path / "a.safetensors"), "motion_module": str(tmp_path / "b.ckpt")})
    assert "checkpoint=" in str(info.value) and "motion_module=" in str(info.value)


# ------------------------------------------------------------------------------------------------- offline
@pytest.fixture
def empty_hub(monkeypatch):
    """A hub cache with nothing in it; any real download attempt fails the test."""
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        asked.append((repo_id, filename, local_files_only))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise AssertionError("a download was attempted although the hub cannot be reached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return asked


def test_offline_names_every_missing_file_with_overrides(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = {"checkpoint": hub.DEFAULT_CHECKPOINT, "motion_module": hub.DEFAULT_MOTION_MODULE, "motion.lora": None}
    t = time.perf_counter()
    with pytest.raises(hub.DownloadError) as info:
        hub.resolve_all(refs)
    assert time.perf_counter() - t < 5  # a cache lookup per file, no network, no retries
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "2 weight files are not in the Hugging Face cache" in message
    assert f"checkpoint={hub.DEFAULT_CHECKPOINT}" in message and f"motion_module={hub.DEFAULT_MOTION_MODULE}" in message
    assert "checkpoint=/path/v1-5-pruned-emaonly.safetensors motion_module=/path/mm_sd_v15_v2.ckpt" in message
    assert [a[2] for a in empty_hub] == [True, True]


def test_unreachable_hub_is_checked_once(empty_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    attempts = []

    def no_network(address, timeout=None, **kwargs):
        attempts.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(hub.DownloadError, match="huggingface.co:443 cannot be reached"):
        hub.resolve_all({"checkpoint": hub.DEFAULT_CHECKPOINT, "motion_module": hub.DEFAULT_MOTION_MODULE})
    assert attempts == [(("huggingface.co", 443), 3.0)]


def test_offline_message_from_the_cli_once_and_nothing_on_disk(empty_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(gen.main, ["animatezero", "prompt=a cat, blinking"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.count("not in the Hugging Face cache") == 1 and "not in the Hugging Face cache" not in out
    assert "checkpoint=/path/" in err and "motion_module=/path/" in err
    assert list(tmp_path.iterdir()) == []


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


# ------------------------------------------------------------------------------------------------- Python API
def test_progress_bar_over_the_steps(tiny_pipe, monkeypatch):
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total, desc, **kwargs):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    seen = []
    image = tiny_pipe.text_to_image("a cat", height=64, width=64, steps=2, seed=1, callback=seen.append)
    tiny_pipe.animate(image, num_frames=2, seed=1)
    assert [(b.desc, b.total, b.n) for b in bars] == [("image", 2, 2), ("video", 2, 2)]
    assert len(seen) == 2  # the user's callback still runs
    monkeypatch.setattr(tiny_pipe, "progress", False)
    tiny_pipe.text_to_image("a cat", height=64, width=64, steps=2, seed=1)
    assert len(bars) == 2


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
