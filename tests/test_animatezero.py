"""AnimateZero end to end on tiny synthetic checkpoints (paper Sec. 4): the first-frame promise, each control's effect,
the AnimateDiff equivalence with every control off, and that processors never outlive a call."""

import dataclasses

import pytest
import torch

from animatezero.controls import Controls
from animatezero.hooks import installed
from animatezero.method import share_initial_noise, temporal_processors
from animatezero.processors import Anchor
from models.attention import Attention

SIZE, STEPS, FRAMES = 64, 2, 4


@pytest.fixture(scope="module")
def image(tiny_pipe):
    return tiny_pipe.text_to_image("a cat, blinking", height=SIZE, width=SIZE, steps=STEPS, seed=7, record_kv=True)


@pytest.fixture(scope="module")
def noise(tiny_pipe):
    return tiny_pipe.noise((1, 4, FRAMES, SIZE // 8, SIZE // 8), seed=11)


@pytest.fixture(scope="module")
def paper_video(tiny_pipe, image, noise):
    return tiny_pipe.animate(image, latents=noise, num_frames=FRAMES)


def no_processors_left(pipe):
    layers = [m for net in (pipe.unet, pipe.motion_module) for m in net.modules() if isinstance(m, Attention)]
    return layers and all(m.processor is None for m in layers)


def test_trajectory_recorded(image, tiny_pipe):
    assert len(image.trajectory) == STEPS + 1 and image.timesteps == tiny_pipe.schedule.timesteps(STEPS)
    assert torch.equal(image.trajectory[-1], image.latent)
    assert image.kv_bank is not None and image.info["kv_bank_bytes"] == image.kv_bank.nbytes > 0
    n_layers = 16  # SD1.5's spatial self-attention layers: 6 down, 1 mid, 9 up
    assert len(image.kv_bank.entries) == n_layers * STEPS


def test_recording_does_not_change_the_image(tiny_pipe, image):
    plain = tiny_pipe.text_to_image("a cat, blinking", height=SIZE, width=SIZE, steps=STEPS, seed=7)
    assert torch.equal(plain.image, image.image) and plain.kv_bank is None


def test_first_frame_is_the_image(paper_video, image, tiny_pipe):
    assert paper_video.frames.shape == (FRAMES, 3, SIZE, SIZE)
    assert (paper_video.frames[0] - image.image).abs().max().item() <= 1e-3
    assert torch.equal(paper_video.latents[:, :, 0], image.latent)
    assert no_processors_left(tiny_pipe)


def test_all_controls_off_is_animatediff_bit_for_bit(tiny_pipe, image, noise):
    off = tiny_pipe.animate(image, latents=noise, num_frames=FRAMES, controls=Controls.animatediff())
    t2v = tiny_pipe.text_to_video(
        "a cat, blinking", num_frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, latents=noise
    )
    assert torch.equal(off.frames, t2v.frames)
    assert (off.frames[0] - image.image).abs().max().item() > 1e-2  # without insertion frame 0 is not the image
    assert (off.info["mode"], t2v.info["mode"]) == ("animatediff", "animatediff")
    # the one dispatch: a loop or an interpolation with every control off is the same plain text-to-video
    other = tiny_pipe.text_to_image("a dog", height=SIZE, width=SIZE, steps=STEPS, seed=8)
    for last in (image, other):
        ends = tiny_pipe.animate(image, last=last, latents=noise, num_frames=FRAMES, controls=Controls.animatediff())
        assert torch.equal(ends.frames, t2v.frames) and ends.info["mode"] == "animatediff"


@pytest.mark.parametrize(
    "change",
    [
        {"insert_latent": False},
        {"share_kv": False},
        {"kv_mode": "concat"},
        {"kv_source": "current"},
        {"kv_blocks": ("up",)},
        {"kv_steps": (0.0, 0.5)},
        {"window_attention": False},
        {"window_size": 2},
        {"position_correction": False},
        {"window_blocks": ("down", "mid", "up")},
        {"noise_share": 0.5},
    ],
)
def test_each_switch_changes_the_output(tiny_pipe, image, noise, paper_video, change):
    video = tiny_pipe.animate(
        image, latents=noise, num_frames=FRAMES, controls=dataclasses.replace(Controls(), **change)
    )
    assert (video.frames - paper_video.frames).abs().max().item() > 1e-4
    assert no_processors_left(tiny_pipe)


@pytest.mark.parametrize("share", [0.3, 1.0])
def test_noise_share_mixes_in_the_images_initial_noise(tiny_pipe, image, noise, share):
    """``noise_share`` s is the same as giving the latents sqrt(s) z_T + sqrt(1 - s) n (docs/method.md §3)."""
    mixed = share**0.5 * image.trajectory[0][:, :, None] + (1 - share) ** 0.5 * noise  # [1, 4, f, h, w]
    given = tiny_pipe.animate(image, latents=mixed, num_frames=FRAMES)
    shared = tiny_pipe.animate(image, latents=noise, num_frames=FRAMES, controls=Controls(noise_share=share))
    assert torch.allclose(shared.frames, given.frames, atol=1e-6)


def test_noise_share_takes_the_nearer_anchor_and_checks_its_range():
    x = torch.randn(1, 4, 5, 2, 2)
    first, last = torch.full((1, 4, 2, 2), 1.0), torch.full((1, 4, 2, 2), -1.0)
    anchors = [Anchor(0, trajectory=[first]), Anchor(4, trajectory=[last])]
    assert share_initial_noise(x, anchors, 0.0) is x
    out = share_initial_noise(x, anchors, 1.0)
    assert out[:, :, :2].eq(1.0).all() and out[:, :, 3:].eq(-1.0).all()  # frame 2 is a tie: the first anchor
    with pytest.raises(ValueError, match="noise_share must be a fraction"):
        Controls(noise_share=1.5)


def test_window_attention_last_frame_equals_global(tiny_pipe):
    """In each motion-module attention layer, with correction the last frame's window is the whole clip at the
    original positions, so its output equals global attention's (the other frames differ)."""
    motion = tiny_pipe.motion_module
    processors = temporal_processors(Controls(), motion, FRAMES, motion.config.max_positions)
    name = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0"
    assert name in processors and not any(n.startswith(("up_blocks", "mid_block")) for n in processors)
    layer = motion.get_submodule(name)
    x = torch.randn(5, FRAMES, layer.to_q.in_features)  # [(b h w), f, c] frame tokens
    with torch.inference_mode():
        plain = layer(x)
        with installed(motion, processors):
            windowed = layer(x)
    assert (windowed[:, -1] - plain[:, -1]).abs().max().item() < 1e-5
    assert (windowed[:, 1:-1] - plain[:, 1:-1]).abs().max().item() > 1e-4


def test_same_seed_same_video(tiny_pipe, image):
    a = tiny_pipe.animate(image, num_frames=4, seed=3)
    b = tiny_pipe.animate(image, num_frames=4, seed=3)
    assert torch.equal(a.frames, b.frames) and a.seed == 3


def test_prompt_steers_and_defaults_to_image_prompt(tiny_pipe, image, noise, paper_video):
    same = tiny_pipe.animate(image, "a cat, blinking", latents=noise, num_frames=FRAMES)
    other = tiny_pipe.animate(image, "a dog running on the beach", latents=noise, num_frames=FRAMES)
    assert torch.equal(same.frames, paper_video.frames)
    assert (other.frames[1:] - paper_video.frames[1:]).abs().max().item() > 1e-4
    assert (other.frames[0] - image.image).abs().max().item() <= 1e-3


def test_replayed_features_equal_recorded(tiny_pipe, image, noise, paper_video):
    """An image made without record_kv gets its keys/values by replaying step 1: identical to recording them."""
    plain = tiny_pipe.text_to_image("a cat, blinking", height=SIZE, width=SIZE, steps=STEPS, seed=7)
    assert plain.kv_bank is None
    video = tiny_pipe.animate(plain, latents=noise, num_frames=FRAMES)
    assert plain.kv_bank is not None and plain.kv_bank.entries.keys() == image.kv_bank.entries.keys()
    assert all(torch.equal(plain.kv_bank.entries[k][0], image.kv_bank.entries[k][0]) for k in image.kv_bank.entries)
    assert torch.equal(video.frames, paper_video.frames)


@pytest.mark.parametrize("controls", [Controls(), Controls(kv_source="current"), Controls.animatediff()])
def test_lockstep_generate_equals_image_then_animate(tiny_pipe, controls):
    """generate() interleaves step 1 and step 2 (one step's keys/values held) with identical results."""
    kwargs = dict(height=SIZE, width=SIZE, steps=STEPS, seed=21)
    image, video = tiny_pipe.generate("a cat, blinking", num_frames=FRAMES, controls=controls, **kwargs)
    ref_image = tiny_pipe.text_to_image("a cat, blinking", record_kv=True, **kwargs)
    ref_video = tiny_pipe.animate(ref_image, num_frames=FRAMES, seed=21, controls=controls)
    assert torch.equal(image.image, ref_image.image)
    assert all(torch.equal(a, b) for a, b in zip(image.trajectory, ref_image.trajectory))
    assert torch.equal(video.frames, ref_video.frames)
    if controls.share_kv and controls.kv_source == "cached":
        assert 0 < image.info["kv_bank_bytes"] * STEPS == ref_image.kv_bank.nbytes
    assert no_processors_left(tiny_pipe)
