"""Bad values on the ``animatezero`` command line: each is one line on stderr naming the key, exit status 2, and
nothing on disk (no run folder, nothing in the current folder). The values the pipeline checks are checked by the
pipeline's own functions (``animatezero.checks``) before the run folder exists, so the two cannot disagree."""

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from animatezero import checks
from experiments import cli, common
from experiments import generate as gen

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LONG = "a" * 300  # one path component over the 255 bytes file systems allow



def run_cli(argv, monkeypatch, capsys):
    """``animatezero ARGV`` as typed in a shell -> (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["animatezero", *argv])
    try:
        with pytest.raises(SystemExit) as exit_info:
            gen.main()
    finally:
        GlobalHydra.instance().clear()
    return exit_info.value.code, capsys.readouterr().err


def not_an_image(tmp_path):
    path = tmp_path / "photo.png"
    path.write_text("this is not a picture")
    return path


BAD = [
    (["size=4096"], "size=4096"),  # the CLI took up to 4096, the pipeline 2048: it failed after the folder existed
    (["frames=100000"], "frames=100000"),  # beyond the motion module's position table
    (["frames=40"], "motion module's 32 positions"),
    (["frames=1000000", "controls.sliding_windows=true"], f"more than the {checks.MAX_FRAMES}"),
    (["image={bad}"], "image="),
    (["end_image={bad}"], "end_image="),
    (["paths.run_files.image=image.xyz"], "paths.run_files.image=image.xyz"),
    (["paths.run_files.video=video.avi"], "paths.run_files.video=video.avi"),
    (["model.cpu_threads=-1"], "model.cpu_threads=-1"),
    (["model.cpu_threads=abc"], "model.cpu_threads=abc"),
    (["model.vae_chunk_size=-1"], "model.vae_chunk_size=-1"),
    (["model.device=tpu"], "model.device=tpu"),
    (["model.device=meta"], "model.device=meta"),
    (["model.dtype=float8"], "model.dtype=float8"),
    (["motion_module=null"], "motion_module=null"),
    (["motion.lora_scale=nan"], "motion.lora_scale=nan"),
    (["out_dir="], "out_dir= is empty"),
    ([f"out_dir={{tmp}}/{LONG}/run"], "out_dir="),
    ([f"checkpoint={{tmp}}/{LONG}.safetensors"], "checkpoint="),
    ([f"image={{tmp}}/{LONG}.png"], "image="),
    ([f"paths.run_files.video={LONG}.mp4"], "paths.run_files.video="),
]


@pytest.mark.parametrize("args, named", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_value_is_one_line_exit_2_and_leaves_nothing(tmp_path, tiny_cache, monkeypatch, capsys, args, named):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # out_dir= (empty) used to write the run into the current folder
    out = tmp_path / "run"
    fill = {"bad": not_an_image(tmp_path), "tmp": tmp_path}
    args = [a.format(**fill) for a in args]
    out_arg = [] if any(a.startswith("out_dir=") for a in args) else [f"out_dir={out}"]
    code, err = run_cli(
        ["debug=tiny", f"paths.cache_dir={tiny_cache}", "prompt=x", *out_arg, *args], monkeypatch, capsys
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("animatezero: error: "), err
    assert named in lines[0] and "Traceback" not in err
    assert len(lines[0]) < 600  # a 300-character name is not echoed in full, twice
    assert not out.exists()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("size", [64, 960, 2048, 2112, 4096])
def test_the_cli_accepts_a_size_exactly_when_the_pipeline_does(tiny_cache, size):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("generate", overrides=["debug=tiny", f"paths.cache_dir={tiny_cache}", "prompt=x", f"size={size}"])
    try:
        checks.check_size(size, size)
        pipeline_ok = True
    except ValueError:
        pipeline_ok = False
    try:
        cli.apply_shortcuts(cfg)
        cli.check_values(cfg)
        common.check_like_the_pipeline(cfg)
        cli_ok = True
    except cli.ConfigError:
        cli_ok = False
    assert cli_ok == pipeline_ok


def test_a_truncated_image_is_refused_before_the_run_folder(tmp_path, tiny_cache, monkeypatch, capsys):
    """A real PNG header with its pixel data cut: only decoding finds it, so it is decoded before the folder."""
    photo = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photo)
    photo.write_bytes(photo.read_bytes()[:60])
    out = tmp_path / "run"
    args = ["debug=tiny", f"paths.cache_dir={tiny_cache}", f"image={photo}", f"out_dir={out}"]
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and f"image={photo}" in err and not out.exists()


def test_error_messages_are_one_bounded_line(capsys):
    with pytest.raises(SystemExit):
        with cli.one_line_errors("animatezero"):
            raise ValueError("first line\n  second line\n\nthird " + "k" * 1_000_000)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "first line; second line; third" in err
    assert len(err) < 2 * cli.MAX_MESSAGE


def test_a_too_long_name_from_the_file_system_is_one_line(tmp_path, capsys):
    """The last guard: ENAMETOOLONG from anywhere (here a path the checks did not see) is a user error."""
    with pytest.raises(SystemExit) as exit_info:
        with cli.one_line_errors("animatezero"):
            (tmp_path / LONG).mkdir()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "longer than the file system allows" in err
