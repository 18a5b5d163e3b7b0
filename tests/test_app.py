"""The interactive app's logic without a browser (experiments/app.py): model choice, the checks on uploads and page
fields (before any work), the per-request budget, Stop ending a job between steps, the controls panel round trip,
and that an animation starts from exactly the picked candidate and is written to a run directory."""

import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from animatezero import toyworld
from animatezero.controls import Controls
from experiments import app
from experiments.budget import OverBudgetError

SAMPLING = {"steps": 2, "guidance": 7.5, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    cfg = app.compose_config(["debug=tiny", f"paths.cache_dir={root / 'cache'}", f"paths.output_root={root / 'out'}"])
    return app.Session.load(cfg)


class Steps:
    """A progress bar stand-in that counts the per-step calls, and presses Stop for ``owner`` at step ``stop_at``."""

    def __init__(self, session=None, owner="", stop_at=None):
        self.session, self.owner, self.stop_at, self.calls = session, owner, stop_at, 0

    def __call__(self, done, desc="", unit=""):
        self.calls += 1
        if self.calls == self.stop_at:
            self.session.stop(self.owner)


def png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` pixels but holds no image data (decoding it would fail)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_model_choice_defaults_to_the_toy_world_or_says_how_to_choose(monkeypatch, tmp_path):
    if toyworld.available():
        cfg = app.compose_config(["seed=3", "steps=4"])
        assert cfg.model.checkpoint == str(toyworld.CHECKPOINT) and cfg.motion.checkpoint == str(toyworld.MOTION_MODULE)
        assert cfg.sampler.steps == 4  # the CLI's shortcuts apply
    monkeypatch.setattr(toyworld, "CHECKPOINT", tmp_path / "toy.safetensors")
    with pytest.raises(
        app.AppInputError, match=r"no model given, and the toy-world model files are missing.*debug=tiny"
    ):
        app.compose_config([])
    with pytest.raises(ValueError, match="steps=0 is out of range"):  # the CLI's value checks
        app.compose_config(["debug=tiny", "steps=0"])


def test_flags_bind_localhost_by_default_and_pass_overrides_through():
    args, overrides = app.parse_args(["debug=tiny", "--port", "0", "checkpoint=x.safetensors"])
    assert (args.host, args.port, args.budget) == ("127.0.0.1", 0, None)
    assert overrides == ["debug=tiny", "checkpoint=x.safetensors"]
    assert app.parse_args(["--budget", "2.5"])[0].budget == 2.5
    for bad in (["--nope"], ["--budget", "0"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)


def test_uploads_are_checked_by_the_projects_reader_and_named_as_uploaded(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 24), (10, 20, 30)).save(good)
    assert app.load_upload(good, (64, 64)).shape == (3, 24, 32)

    garbage = tmp_path / "notes.png"
    garbage.write_text("not an image at all")
    with pytest.raises(app.AppInputError, match="cannot read image 'notes.png'") as e:
        app.load_upload(garbage, (64, 64))
    assert str(tmp_path) not in str(e.value)  # the server's temporary folder is never shown

    big = png_header_only(tmp_path / "big.png", 9000, 8000)  # refused from the header alone: nothing is decoded
    with pytest.raises(app.AppInputError, match="'big.png' is 9000x8000 = 72 megapixels, over the 64 MP limit"):
        app.load_upload(big, (64, 64))
    with pytest.raises(app.AppInputError, match="no image uploaded"):
        app.load_upload(None, (64, 64))
    monkeypatch.setattr(app, "MAX_UPLOAD_BYTES", 10)  # animatezero.io's limit, as the app uses it
    with pytest.raises(app.AppInputError, match=r"the image 'good.png' is 0.0 MB; the limit is"):
        app.load_upload(good, (64, 64))


@pytest.mark.parametrize("name", Controls.PRESETS)
def test_controls_panel_round_trips_every_preset(name):
    controls = Controls.preset(name)
    values = app.control_values(controls)
    assert app.controls_from(values) == controls
    assert {"insert_steps_from", "kv_steps_to", "window_size"} <= set(values)


def test_bad_fields_give_one_message(session):
    with pytest.raises(app.AppInputError, match="CLIP reads at most 75"):
        session.candidates(prompt="a cat " * 50, **SAMPLING)
    with pytest.raises(app.AppInputError, match="write a prompt"):
        session.candidates(prompt="  ", **SAMPLING)
    with pytest.raises(ValueError, match="height must be a multiple of 8"):
        session.candidates(prompt="a cat", **{**SAMPLING, "height": 70})
    with pytest.raises(app.AppInputError, match="steps must be a whole number"):
        session.candidates(prompt="a cat", **{**SAMPLING, "steps": 2.5})
    with pytest.raises(app.AppInputError, match="pick an image first"):
        session.animate(None, Controls.paper(), frames=4)


def test_work_over_the_budget_is_refused_up_front_saying_what_fits(session, monkeypatch):
    """The issue's request (8 candidates at 1024x1024, 200 steps) is refused on a CPU before any step runs."""
    steps = Steps()
    request = {"prompt": "a cat", "count": 8, "steps": 200, "guidance": 7.5, "height": 1024, "width": 1024}
    assert session.budget == app.BUDGET["cpu"]
    with pytest.raises(
        OverBudgetError, match=r"1,678 megapixel-steps .* budget of 16 .* What fits.*at most 1 steps"
    ) as e:
        session.candidates(**request, progress=steps)
    assert "at most 64x64 pixels" in str(e.value) and "candidates at 200" not in str(e.value) and steps.calls == 0
    monkeypatch.setattr(session, "budget", 0.05)  # 8 x 64x64 x 2 steps = 0.066
    with pytest.raises(
        OverBudgetError,
        match=r"0.066 megapixel-steps.*changing one setting: at most 1 steps, or at most 6 candidates at 2 steps$",
    ):
        session.candidates(prompt="a cat", count=8, **SAMPLING, progress=steps)
    assert steps.calls == 0


def test_stop_ends_the_job_between_steps(session):
    steps = Steps(session, owner="visitor", stop_at=2)
    with pytest.raises(app.Cancelled, match="stopped after 2 of 12 steps"):
        session.candidates(prompt="a cat", count=3, **{**SAMPLING, "steps": 4}, owner="visitor", progress=steps)
    assert steps.calls == 2  # of the 12 steps asked for
    assert not any(m.processor for m in session.pipe.unet.modules() if hasattr(m, "processor"))
    (image,) = session.candidates(prompt="a cat", **SAMPLING, owner="visitor")  # an earlier Stop does not carry over

    steps = Steps(session, owner="visitor", stop_at=1)
    with pytest.raises(app.Cancelled, match="stopped after 1 of 2 steps"):
        session.animate(image, Controls.paper(), frames=4, owner="visitor", progress=steps)
    assert image.kv_bank is None and steps.calls == 1


def test_fps_and_uploads_are_checked_before_any_work(session, tmp_path):
    (image,) = session.candidates(prompt="a cat", **SAMPLING)
    steps, runs = Steps(), sorted(session.root.rglob("run.json"))
    with pytest.raises(app.AppInputError, match="fps must be a whole number from 1 to 240, got 0"):
        session.animate(image, Controls.paper(), frames=4, fps=0, progress=steps)
    with pytest.raises(app.AppInputError, match="no second image uploaded"):
        session.animate(image, Controls.paper(), frames=4, mode="interpolate to a second image", progress=steps)
    assert steps.calls == 0 and runs == sorted(session.root.rglob("run.json"))  # nothing computed, no run folder


def test_motion_module_null_gives_an_images_only_app(tmp_path):
    cfg = app.compose_config(["debug=tiny", "motion_module=null", f"paths.cache_dir={tmp_path}"])
    images_only = app.Session.load(cfg, tmp_path / "out")
    assert images_only.pipe.motion_module is None and "no motion module" in images_only.name
    (image,) = images_only.candidates(prompt="a cat", **SAMPLING)
    with pytest.raises(app.AppInputError, match="without a motion module.*motion_module="):
        images_only.animate(image, Controls.paper(), frames=4)


def test_animate_starts_from_the_picked_candidate_and_writes_a_run(session):
    images = session.candidates(prompt="a cat, blinking", seed=5, count=3, **SAMPLING)
    assert [im.seed for im in images] == [5, 6, 7]
    run = session.animate(images[1], Controls.paper(), frames=4, fps=8)
    assert run.seed == 6 and run.mode == "animatezero" and run.video.num_frames == 4
    assert images[1].kv_bank is None  # the recorded keys/values are not kept in the session
    assert run.run_dir.is_relative_to(session.root / "app")  # a run folder, never Gradio's temporary one

    picked = np.asarray(app.to_pil(images[1].image))
    with zipfile.ZipFile(run.files["zip"]) as z:
        assert sorted(z.namelist()) == [f"{i:04d}.png" for i in range(4)]
        with z.open("0000.png") as f:
            first = np.asarray(Image.open(f).convert("RGB"))
    assert np.abs(first.astype(int) - picked.astype(int)).max() <= 1  # the same 8-bit pixels, up to rounding
    assert np.array_equal(np.asarray(Image.open(run.files["image"]).convert("RGB")), picked)
    record = json.loads(run.files["run"].read_text())
    assert record["status"] == "done" and record["kind"] == "app" and record["mode"] == "animatezero"
    assert record["seeds"] == {"image": 6, "video": 6} and record["sampler"]["num_frames"] == 4
    assert record["files"]["zip"] == "frames.zip" and run.first_frame_psnr > 40

    longer = session.extend(run, frames=3)
    assert longer.video.num_frames == 4 + 2 and longer.segments == 2 and longer.mode == "animatezero+continue"
    loop = session.animate(images[0], Controls.paper(), frames=4, seed=1, mode="loop")
    assert loop.mode == "loop" and loop.seed == 1
    plain = session.animate(images[0], Controls.animatediff(), frames=4, seed=1, mode="loop")
    assert plain.mode == "animatediff"  # every control off: the pipeline's dispatch makes plain AnimateDiff


def test_real_image_inverted_then_interpolated_to_a_second_upload(session, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(np.linspace(0, 255, 80 * 96 * 3).reshape(80, 96, 3).astype(np.uint8)).save(a)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(b)
    real = session.invert(upload=str(a), prompt="a gradient", **SAMPLING)
    assert real.height == real.width == 64 and real.info["psnr_db"] > 0 and real.info["source"] == "a.png"
    run = session.animate(
        real, Controls.paper(), frames=4, seed=9, mode="interpolate to a second image", end_upload=str(b)
    )
    assert run.mode == "interpolation" and run.seed == 9 and run.video.num_frames == 4
    assert run.video.info["frame0_psnr_db"] > 40 and run.video.info["frame3_psnr_db"] > 40  # both ends exact
    assert str(tmp_path) not in run.files["run"].read_text()  # the uploads are named, not their server paths
