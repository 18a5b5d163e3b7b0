"""The Python API's contract around sampling: bad arguments are refused before any sampling, non-finite results
raise instead of giving black frames, and a progress bar runs over the steps beside the user's callback."""

from __future__ import annotations

import pytest
import torch

# ----------------------------------------------------------------------------------- pipeline arguments
SIZE = 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guidance_scale": float("inf")}, "guidance_scale must be >= 0 and finite"),
        ({"latents": torch.full((1, 4, 8, 8), float("nan"))}, "latents contain NaN"),
        ({"latents": torch.full((1, 4, 8, 8), float("inf"))}, "latents contain NaN"),
        ({"seed": 1.5}, r"seed must be a whole number in 0..2\*\*64-1, got 1.5"),
        ({"seed": True}, "seed must be a whole number"),
        ({"seed": 2**64}, "out of range"),
        ({"seed": -1}, "out of range"),
    ],
)
def test_bad_inputs_are_refused_before_any_sampling(tiny_pipe, kwargs, match, monkeypatch):
    monkeypatch.setattr(tiny_pipe.runner, "forward", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(ValueError, match=match):
        tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=2, **kwargs)


def test_largest_seed_is_accepted(tiny_pipe):
    assert tiny_pipe.noise((1, 4, 2, 2), 2**64 - 1).shape == (1, 4, 2, 2)


def test_non_finite_results_raise_instead_of_black_frames(tiny_pipe, monkeypatch):
    from animatezero.pipeline import NonFiniteError

    monkeypatch.setattr(tiny_pipe.runner, "forward", lambda x, *a, **k: torch.full_like(x, float("nan")))
    with pytest.raises(NonFiniteError, match="NaN or infinite latents"):
        tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=2, seed=0)
    with pytest.raises(NonFiniteError):
        tiny_pipe.text_to_video("x", num_frames=2, height=SIZE, width=SIZE, steps=1, seed=0)


# ------------------------------------------------------------------------------------------------- progress
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
