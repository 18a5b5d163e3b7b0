"""The ``animatezero`` CLI (experiments/generate.py) on tiny synthetic checkpoints: files written, run.json content,
early failures for bad output paths, and W&B trouble never failing a run."""

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from experiments import common
from experiments import generate as gen
from experiments.runs import OutputDirError, OutputPathError, WandbRun, inside, prepare_run_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"



def tiny_cfg(cache, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        overrides = gen.quote_text_overrides(["debug=tiny", f"paths.cache_dir={cache}", *overrides])
        return compose("generate", overrides=overrides)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("controls", ["paper", "animatediff"])
def test_generate_writes_image_video_frames_and_run_json(tmp_path, tiny_cache, controls):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_cache, "prompt=a cat, blinking", "seed=3", f"out_dir={out}", f"controls={controls}")
    assert gen.generate(cfg) == out

    assert Image.open(out / "image.png").size == (64, 64)
    frames = sorted((out / "frames").glob("*.png"))
    assert [f.name for f in frames] == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert Image.open(out / "video.gif").n_frames == 4
    import av

    with av.open(str(out / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["kind"] == "generate"
    assert run["mode"] == ("animatediff" if controls == "animatediff" else "animatezero")
    assert run["configuration"] == controls
    assert run["prompt"] == "a cat, blinking" and run["seeds"] == {"image": 3, "video": 3}
    assert run["checkpoints"]["checkpoint"]["sha256"] == sha256(cfg.checkpoint)
    assert run["checkpoints"]["motion_module"]["sha256"] == sha256(cfg.motion_module)
    assert {"python", "torch", "animatezero"} <= set(run["versions"])
    assert run["device"] == "cpu" and run["dtype"] == "float32"
    assert {"load_s", "write_s", "total_s"} <= set(run["timings"])
    # AnimateZero runs steps 1 and 2 in lockstep (lockstep=true), AnimateDiff makes the image, then the video
    steps_timed = {"image_and_video_s"} if controls == "paper" else {"image_s", "video_s"}
    assert steps_timed <= set(run["timings"])
    assert run["config"]["sampler"]["steps"] == 2 and run["config"]["controls"]["name"] == controls
    assert run["files"] == {"image": "image.png", "video": "video.mp4", "gif": "video.gif", "frames": "frames"}
    assert "git" in run
    if controls == "paper":  # latent insertion: frame 0 is the step-1 image
        assert run["quick_metrics"]["first_frame_psnr"] > 40
        assert run["image_info"]["kv_bank_bytes"] > 0 and run["video_info"]["frame0_psnr_db"] > 40
        assert run["image_info"]["lockstep"] is True


def test_console_script_runs_under_hydra(tmp_path, tiny_cache, monkeypatch):
    """``animatezero debug=tiny prompt=a cat, blinking`` as typed in a shell (its quotes already removed)."""
    monkeypatch.chdir(tmp_path)  # the default out_dir is relative: outputs/debug/generate/<date>/<time>
    argv = ["animatezero", "debug=tiny", "prompt=a cat, blinking (smiling)", f"paths.cache_dir={tiny_cache}"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        gen.main()
    finally:
        GlobalHydra.instance().clear()
    (run_dir,) = (tmp_path / "outputs" / "debug" / "generate").glob("*/*")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "done" and run["prompt"] == "a cat, blinking (smiling)"
    assert (run_dir / "video.mp4").is_file()
    # Hydra itself writes nothing: no .hydra/, no log file, no second folder
    assert not (run_dir / ".hydra").exists() and not list(tmp_path.glob("*.log")) and not list(run_dir.glob("*.log"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


def test_quote_text_overrides():
    q = gen.quote_text_overrides
    assert q(["prompt=a cat, blinking"]) == ["prompt='a cat, blinking'"]
    assert q(["prompt='already quoted'", 'negative_prompt="x, y"']) == [
        "prompt='already quoted'",
        'negative_prompt="x, y"',
    ]
    assert q(["prompt=it's"]) == ["prompt='it\\'s'"]
    assert q(["seed=1", "controls=animatediff"]) == ["seed=1", "controls=animatediff"]


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if anything gets as far as building checkpoints or the pipeline."""

    def forbidden(*args, **kwargs):
        raise AssertionError("generation started although the output path is bad")

    monkeypatch.setattr(common, "ensure_synthetic", forbidden)
    monkeypatch.setattr(common, "load_pipeline", forbidden)


def test_unwritable_out_dir_fails_before_generation(tmp_path, tiny_cache, no_generation):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    cfg = tiny_cfg(tiny_cache, "prompt=x", f"out_dir={blocker / 'run'}")
    with pytest.raises(OutputDirError, match="cannot write to the output directory"):
        gen.generate(cfg)


def test_unwritable_out_dir_message_from_the_cli(tmp_path, tiny_cache, no_generation, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["animatezero", "debug=tiny", "prompt=x", f"out_dir={blocker / 'run'}", f"hydra.run.dir={tmp_path / 'h'}"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        with pytest.raises(SystemExit) as exit_info:
            gen.main()
    finally:
        GlobalHydra.instance().clear()
    assert exit_info.value.code == 2  # a user error: one message, no traceback
    err = capsys.readouterr().err
    assert "animatezero: error:" in err and "cannot write to the output directory" in err and "Traceback" not in err


@pytest.mark.parametrize("errno_code, reason", [(13, "Permission denied"), (28, "No space left on device")])
def test_read_only_or_full_out_dir_fails(tmp_path, monkeypatch, errno_code, reason):
    """A read-only or full disk is simulated (root ignores permission bits): the write probe fails before any work."""
    import os

    from experiments import runs

    def refuse(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code))

    monkeypatch.setattr(runs.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OutputDirError, match=f"cannot write to the output directory .*{reason}"):
        prepare_run_dir(tmp_path / "run")


def test_out_dir_holding_a_run_is_refused(tmp_path, tiny_cache, no_generation):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(OutputDirError, match="already holds a run"):
        gen.generate(tiny_cfg(tiny_cache, "prompt=x", f"out_dir={tmp_path}"))


@pytest.mark.parametrize("bad", ["../../escaped.mp4", "/tmp/abs.mp4", "sub/../../x.mp4", "."])
def test_output_path_escaping_the_run_dir_is_rejected(tmp_path, tiny_cache, no_generation, bad):
    cfg = tiny_cfg(tiny_cache, "prompt=x", f"out_dir={tmp_path / 'run'}", f"paths.run_files.video='{bad}'")
    with pytest.raises(OutputPathError):
        gen.generate(cfg)
    assert not (tmp_path / "escaped.mp4").exists()


def test_inside_accepts_subpaths(tmp_path):
    assert inside(tmp_path, "frames") == tmp_path / "frames"
    assert inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"


def test_wandb_failure_does_not_fail_the_run(tmp_path, tiny_cache, monkeypatch):
    import wandb

    calls = []

    def broken_init(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("W&B is down")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", broken_init)
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_cache, "prompt=x", f"out_dir={out}", "wandb.mode=offline")
    with pytest.warns(UserWarning, match="W&B is down"):
        gen.generate(cfg)
    assert calls and calls[0]["mode"] == "offline"
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_wandb_hanging_init_times_out(monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: time.sleep(30))
    t = time.perf_counter()
    with pytest.warns(UserWarning, match="did not finish"):
        run = WandbRun.start(mode="offline", init_timeout=0.1)
    assert time.perf_counter() - t < 15 and not run.active
    run.log({"x": 1})  # a no-op, not an error
    run.finish()


def test_wandb_errors_after_start_are_swallowed(monkeypatch):
    class Broken:
        summary = None

        def log(self, data):
            raise ConnectionError("lost")

        def finish(self):
            raise ConnectionError("lost")

    run = WandbRun(Broken())
    with pytest.warns(UserWarning, match="lost"):
        run.log({"x": 1})
    assert not run.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.log({"x": 2})  # off now: silent
        run.finish()


def test_wandb_disabled_by_environment(monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called although disabled"))
    run = WandbRun.start(mode="online")
    assert not run.active and run.reason == "disabled"


FAKE_HUB = """
import json, os
from pathlib import Path


def hf_hub_download(repo_id, filename, revision=None, local_dir=None):
    with open(os.environ["FAKE_HUB_LOG"], "a") as log:
        log.write(json.dumps([repo_id, filename, revision]) + "\\n")
    path = Path(local_dir) / filename
    path.write_bytes(filename.encode())
    return str(path)
"""


def run_script(name: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python scripts/<name>.py argv``, as a user runs it."""
    script = CONFIGS.parent / "scripts" / f"{name}.py"
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env)


def test_download_checkpoints_fetches_defaults_and_verifies_sha256(tmp_path):
    """The script against a stand-in for ``huggingface_hub`` (first on the path: no network), which records what it
    was asked for and writes the file name as the file's bytes."""
    fake = tmp_path / "fake_hub" / "huggingface_hub"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_HUB)
    log = tmp_path / "fetched.jsonl"
    path = os.pathsep.join([str(fake.parent), str(CONFIGS.parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, FAKE_HUB_LOG=str(log))
    dest = str(tmp_path / "dest")

    done = run_script("download_checkpoints", "--dest", dest, "--revision", "abc", env=env)
    assert done.returncode == 0, done.stderr
    assert [tuple(json.loads(line)) for line in log.read_text().splitlines()] == [
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors", "abc"),
        ("guoyww/animatediff", "mm_sd_v15_v2.ckpt", "abc"),
    ]
    good = hashlib.sha256(b"mm_sd_v14.ckpt").hexdigest()
    done = run_script("download_checkpoints", "mm_sd_v14", "--dest", dest, "--sha256", good, env=env)
    assert done.returncode == 0 and f"sha256={good}" in done.stdout, done.stderr
    done = run_script("download_checkpoints", "mm_sd_v14", "--dest", dest, "--sha256", "0" * 64, env=env)
    assert done.returncode == 2 and "expected" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_make_tiny_checkpoints_load(tmp_path):
    from models.loading import load_motion_module, load_sd15

    done = run_script("make_tiny_checkpoints", "--out", str(tmp_path), "--versions", "3")
    assert done.returncode == 0, done.stderr
    unet, _, _ = load_sd15(tmp_path / "tiny_sd15.safetensors")
    assert load_motion_module(tmp_path / "tiny_mm_v3.ckpt", unet_config=unet.config).config.version == 3


@pytest.mark.parametrize(
    "overrides, mode, frames",
    [
        (["loop=true"], "loop", 4),
        (["end_image_prompt=a blue bird", "end_seed=5"], "interpolation", 4),
        (["end_prompt=a cat, smiling"], "animatezero", 4),
        (["extend=1"], "animatezero", 7),
    ],
)
def test_applications_from_the_cli(tmp_path, tiny_cache, overrides, mode, frames):
    out = tmp_path / "run"
    gen.generate(tiny_cfg(tiny_cache, "prompt=a cat", "seed=2", f"out_dir={out}", *overrides))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["mode"] == mode
    assert len(list((out / "frames").glob("*.png"))) == frames


def test_real_image_and_candidates_from_the_cli(tmp_path, tiny_cache):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(photo)
    out = tmp_path / "real"
    gen.generate(tiny_cfg(tiny_cache, f"image={photo}", f"out_dir={out}"))
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    assert Image.open(out / "image.png").size == (64, 64)

    cands = tmp_path / "cands"
    gen.generate(tiny_cfg(tiny_cache, "prompt=a cat", "seed=10", "candidates=2", f"out_dir={cands}"))
    run = json.loads((cands / "run.json").read_text())
    assert run["mode"] == "candidates" and sorted(run["candidates"]) == ["10", "11"]
    assert sorted(p.name for p in (cands / "candidates").iterdir()) == ["seed_10.png", "seed_11.png"]
    assert not (cands / "video.mp4").exists()
    # run.json lists only files this run wrote
    assert sorted(run["files"].values()) == ["candidates/seed_10.png", "candidates/seed_11.png"]
    assert all((cands / f).is_file() for f in run["files"].values())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gen.generate(tiny_cfg(tiny_cache, f"image={tmp_path / 'nope.png'}", f"out_dir={tmp_path / 'x'}"))
