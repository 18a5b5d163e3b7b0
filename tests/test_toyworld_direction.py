"""scripts/toyworld_direction.py on the shipped toy-world model, at small sizes: the probe finds the motion word in the
UNet's features, the motion modules' inputs know their pixel's column, the x_0 shift and the two-caption experiment
run and report finite tracks."""

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import toyworld_direction as direction  # noqa: E402

from animatezero import toyworld  # noqa: E402

pytestmark = pytest.mark.skipif(not toyworld.available(), reason="toy-world files not installed")


def test_probe_reads_the_motion_word_from_the_unet_features():
    accs = direction.probe(n_train=240, n_test=120, timesteps=(500,))[500]
    assert set(accs) >= {"input_blocks.1", "middle_block"}
    # chance is 1/6; measured at these sizes: 1.00 at best, 0.98 in the middle block (0.94-1.00 at 1,200 captions)
    assert max(accs.values()) >= 0.8 and accs["middle_block"] >= 0.6


def test_motion_module_inputs_know_their_pixel_column():
    """The temporal attention sees one pixel at a time; the features it gets say where that pixel is (measured:
    R^2 0.96-1.00 at 2x2, 0.85-0.96 at 4x4, 0.61-0.87 at 8x8; the 1x1 modules have no column)."""
    r2 = direction.position(timesteps=(960,), batch=8)[960]
    assert not any(name.startswith(("down_blocks.3", "mid_block", "up_blocks.0")) for name in r2)
    at_2x2 = [v for k, v in r2.items() if k.startswith(("down_blocks.2", "up_blocks.1"))]
    assert len(at_2x2) == 5 and min(at_2x2) > 0.85
    assert all(v > 0.5 for v in r2.values())


def test_evidence_reads_direction_from_a_lightly_noised_clip():
    """At t = 100 a noisy clip shows its direction plainly (measured 1.00 at these sizes), and the per-frame mean of
    right-moving clips predicts held-out ones better than their static mean (measured 0.26 against 0.30, 20 clips)."""
    accs, (per_frame, static) = direction.evidence(timesteps=(100,), n_train=24, n_test=12, draws=1)
    assert accs[100] >= 0.75
    assert per_frame < static


def test_the_shift_measure_sees_a_known_direction():
    """On the decoded mean latent of world clips (what a module that knew the direction would predict near t = T)
    the measure finds the 24 px travel: it can tell the directions apart (measured 23 px, 64 clips)."""
    ref = direction.reference_shift(clips=8)
    assert ref["moving right"][0] > 15 and ref["moving left"][0] < -15
    assert ref["moving down"][1] > 15 and ref["moving up"][1] < -15
    assert abs(ref["moving right"][1]) < 5 and abs(ref["moving up"][0]) < 5


def test_shift_and_twoway_report_finite_tracks(tmp_path):
    shifts = direction.shift(timesteps=(900,), batch=2)
    assert set(shifts) == {(900, m) for m in direction.DIRECTIONS}
    assert all(math.isfinite(v) for pair in shifts.values() for v in pair)

    saved = tmp_path / "mm.safetensors"
    pair = [("cyan", "moving left"), ("yellow", "moving right")]
    out, x0_shifts = direction.twoway(
        steps=2, pair=pair, clips=4, seeds=1, save=saved, tmin=950, unet_lr=1e-5, shift_timesteps=(900,), shift_batch=2
    )
    assert set(x0_shifts) == {(900, cap) for cap in out}
    assert all(math.isfinite(v) for xy in x0_shifts.values() for v in xy)
    assert list(out) == [
        "a cyan square moving left on a black background",
        "a yellow square moving right on a black background",
    ]
    for rows in out.values():
        assert len(rows) == 1 and rows[0]["motion_acc"] in (0.0, 1.0)
    assert saved.is_file() and direction.shift(saved, timesteps=(900,), batch=2).keys() == shifts.keys()


def test_sign_separates_the_axis_from_the_way_along_it():
    """``sign``: a clip's outcome against its caption (every motion is its opposite played backwards); the spatial
    UNet's features change less for the sign of a motion than for its axis; step-1 images put the object where the
    world's frame 0 has it (the ``frame0`` stage); the clip counts cover every pair."""
    assert direction.outcome("moving right", "moving left") == "reversed"
    assert direction.outcome("growing", "shrinking") == "reversed"
    assert direction.outcome("moving up", "moving up") == "right"
    assert direction.outcome("moving up", "moving left") == "other"
    assert direction.outcome("shrinking", "static") == "static"
    assert all(direction.OPPOSITE[direction.OPPOSITE[m]] == m for m in direction.OPPOSITE)

    # measured on the shipped checkpoint (8 appearances): sign 0.53, axis 0.82, another color 0.36; before its
    # frame0 stage 0.24, 0.49, 0.34
    change = direction.word_change(n=4)
    assert 0.1 < change["moving left (sign)"] < change["moving up (axis)"]

    # the world's frame 0: a right-moving object starts left of centre (20 px), a left-moving one right (44 px);
    # step-1 images, measured on 16 appearances: 19 and 45 px (x), 45 and 19 px (y) for up and down
    pos = direction.start_positions(n=4)
    assert pos["moving right"][2] < 24 < 40 < pos["moving left"][2]
    assert pos["moving down"][3] < 24 < 40 < pos["moving up"][3]
    assert pos["moving right"][0] + 12 < pos["moving left"][0]
    assert pos["moving down"][1] + 12 < pos["moving up"][1]

    counts = direction.axis_sign(n=6)
    assert sum(sum(c.values()) for c in counts.values()) == 6
