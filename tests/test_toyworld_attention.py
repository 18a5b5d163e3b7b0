"""scripts/toyworld_attention.py on the shipped toy-world model: statistics for every level, and the finding the README
reports (the full-resolution self-attention is broad and not local)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import toyworld_attention  # noqa: E402

from animatezero import toyworld  # noqa: E402
from animatezero.pipeline import AnimateZeroPipeline  # noqa: E402

pytestmark = pytest.mark.skipif(not toyworld.available(), reason="toy-world files not installed")


def test_full_resolution_self_attention_is_broad_and_not_local():
    """Measured (8 prompts, 10 steps): level 0 entropy 0.96 of uniform's, own-token weight 0.016 (uniform 1/64),
    3x3 weight 0.117 (uniform 0.118)."""
    pipe = AnimateZeroPipeline.toyworld()
    pipe.progress = False
    stats = toyworld_attention.measure(pipe, prompts=2, steps=3)
    assert sorted(stats) == [0, 1, 2, 3]
    for s in stats.values():
        assert 0.0 <= s["entropy"] <= 1.0 + 1e-6 and s["own_uniform"] <= s["max_weight"] <= 1.0 + 1e-6
    full = stats[0]
    assert full["own_uniform"] == pytest.approx(1 / 64)
    assert full["entropy"] >= 0.9
    assert full["own"] <= 2 * full["own_uniform"] and full["near"] <= 2 * full["near_uniform"]
    assert stats[3]["max_weight"] == pytest.approx(1.0)  # 1x1 at the deepest level: one token, nothing to choose
