"""The interactive app's logic without a browser (experiments/app.py): model choice, the checks on uploads and page
fields, the controls panel round trip, and that an animation starts from exactly the picked candidate."""

import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animatezero.controls import Controls
from experiments import app


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    cfg = app.compose_config(["debug=tiny", f"paths.cache_dir={root / 'cache'}", f"paths.output_root={root / 'out'}"])
    return app.Session(app.Model.load(cfg))


def png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` pixels but holds no image data (decoding it would fail)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_model_choice_defaults_to_the_toy_world_or_says_how_to_choose(monkeypatch):
    assert app.model_overrides(["debug=tiny", "seed=3"]) == ["debug=tiny", "seed=3"]
    assert app.model_overrides(["checkpoint=a.safetensors"]) == ["checkpoint=a.safetensors"]
    monkeypatch.setattr(app, "toyworld_files", lambda: [Path(__file__)])
    assert app.model_overrides(["seed=3"]) == ["model=toyworld", "seed=3"]
    monkeypatch.setattr(app, "toyworld_files", lambda: None)
    with pytest.raises(app.AppInputError, match="not installed in this package: pass weights.*debug=tiny"):
        app.model_overrides([])
    monkeypatch.setattr(app, "toyworld_files", lambda: [Path("/nowhere/toy.safetensors")])
    with pytest.raises(app.AppInputError, match=r"missing: /nowhere/toy.safetensors\).*debug=tiny"):
        app.model_overrides([])


def test_flags_bind_localhost_by_default_and_pass_overrides_through():
    args, overrides = app.parse_args(["debug=tiny", "--port", "0", "checkpoint=x.safetensors"])
    assert (args.host, args.port) == ("127.0.0.1", 0)
    assert overrides == ["debug=tiny", "checkpoint=x.safetensors"]
    with pytest.raises(SystemExit):
        app.parse_args(["--nope"])


def test_uploads_are_checked_before_decoding(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 24), (10, 20, 30)).save(good)
    assert app.check_upload(good) == good

    garbage = tmp_path / "notes.png"
    garbage.write_text("not an image at all")
    with pytest.raises(app.AppInputError, match="cannot read 'notes.png' as an image"):
        app.check_upload(garbage)

    big = png_header_only(tmp_path / "big.png", 9000, 4000)  # the header alone is read, so this is instant
    with pytest.raises(app.AppInputError, match="9000x4000 pixels; the limit is 8192 pixels a side"):
        app.check_upload(big)
    huge = png_header_only(tmp_path / "huge.png", 30000, 20000)  # a decompression bomb by Pillow's measure too
    with pytest.raises(app.AppInputError, match="far too large.*the limit is"):
        app.check_upload(huge)

    tiff = tmp_path / "scan.tif"
    Image.new("RGB", (8, 8)).save(tiff)
    with pytest.raises(app.AppInputError, match="TIFF image"):
        app.check_upload(tiff)

    monkeypatch.setattr(app, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(app.AppInputError, match="the limit is"):
        app.check_upload(good)
    with pytest.raises(app.AppInputError, match="no image uploaded"):
        app.check_upload(None)


@pytest.mark.parametrize("name", Controls.PRESETS)
def test_controls_panel_round_trips_every_preset(name):
    controls = Controls.preset(name)
    assert app.controls_from_values(app.switch_values(controls)) == controls


def test_bad_fields_give_one_message(session):
    with pytest.raises(app.AppInputError, match="CLIP reads at most 75"):
        session.candidates("a cat " * 50, "", 0, 1, 2, 7.5, 64, 64)
    with pytest.raises(app.AppInputError, match="write a prompt"):
        session.candidates("  ", "", 0, 1, 2, 7.5, 64, 64)
    with pytest.raises(ValueError, match="height must be a multiple of 8"):
        session.candidates("a cat", "", 0, 1, 2, 7.5, 70, 64)
    with pytest.raises(app.AppInputError, match="steps must be a whole number"):
        session.candidates("a cat", "", 0, 1, 2.5, 7.5, 64, 64)
    with pytest.raises(app.AppInputError, match="pick an image first"):
        session.animate(None, Controls.paper(), 4, -1)


def test_without_a_motion_module_animate_says_how_to_get_one(session):
    images_only = app.Session(
        app.Model(
            app.AnimateZeroPipeline(
                session.pipe.unet, session.pipe.vae, session.pipe.text_encoder, session.pipe.tokenizer
            ),
            session.model.cfg,
            "cpu",
            {},
        )
    )
    (image,) = images_only.candidates("a cat", "", 0, 1, 2, 7.5, 64, 64)
    with pytest.raises(app.AppInputError, match="without a motion module.*motion_module="):
        images_only.animate(image, Controls.paper(), 4, -1)


def test_animate_starts_from_the_picked_candidate_and_writes_a_run(session):
    images = session.candidates("a cat, blinking", "", 5, 3, 2, 7.5, 64, 64)
    assert [im.seed for im in images] == [5, 6, 7]
    clip = session.animate(images[1], Controls.paper(), 4, -1)
    assert clip.seed == 6 and clip.mode == "animatezero" and clip.video.num_frames == 4
    assert images[1].kv_bank is None  # the recorded keys/values are not kept in the session
    run_dir, files, metrics = session.write(clip, 8, 1.0)

    picked = np.asarray(app.to_pil(images[1].image))
    with zipfile.ZipFile(files["zip"]) as z:
        assert sorted(z.namelist()) == [f"{i:04d}.png" for i in range(4)]
        with z.open("0000.png") as f:
            first = np.asarray(Image.open(f).convert("RGB"))
    assert np.abs(first.astype(int) - picked.astype(int)).max() <= 1  # the same 8-bit pixels, up to rounding
    assert np.array_equal(np.asarray(Image.open(files["image"]).convert("RGB")), picked)
    run = json.loads(files["run"].read_text())
    assert run["status"] == "done" and run["kind"] == "app" and run["mode"] == "animatezero"
    assert run["seeds"] == {"image": 6, "video": 6} and run["sampler"]["num_frames"] == 4
    assert metrics["first_frame_psnr"] > 40

    longer = session.extend(clip, 3)
    assert longer.video.num_frames == 4 + 2 and longer.segments == 2
    loop = session.animate(images[0], Controls.paper(), 4, 1, mode="loop")
    assert loop.mode == "loop" and loop.seed == 1
    with pytest.raises(app.AppInputError, match="end prompt steers a plain animation only"):
        session.animate(images[0], Controls.paper(), 4, -1, end_prompt="a dog", mode="loop")


def test_real_image_inverted_then_interpolated_to_a_second_upload(session, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(np.linspace(0, 255, 80 * 96 * 3).reshape(80, 96, 3).astype(np.uint8)).save(a)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(b)
    real = session.invert(str(a), "a gradient", "", 2, 7.5, 64, 64)
    assert real.height == real.width == 64 and real.info["psnr_db"] > 0
    clip = session.animate(real, Controls.paper(), 4, 9, mode="interpolate to a second image", end_upload=str(b))
    assert clip.mode == "interpolate" and clip.seed == 9 and clip.video.num_frames == 4
    assert clip.video.info["frame0_psnr_db"] > 40 and clip.video.info["frame3_psnr_db"] > 40  # both ends exact
    with pytest.raises(app.AppInputError, match="no second image uploaded"):
        session.animate(real, Controls.paper(), 4, 9, mode="interpolate to a second image")
