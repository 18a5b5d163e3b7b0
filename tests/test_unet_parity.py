"""The SD1.5 UNet (image and AnimateDiff video) vs diffusers, both loaded from the same synthetic checkpoint files.

The UNet file is written from the LDM key/shape recipe in docs/checkpoints.md §3 (not from our module) under the real
prefix ``model.diffusion_model.``, at the widths of ``UNetConfig.tiny()``, with random weights. diffusers reads it
with ``UNet2DConditionModel.from_single_file`` and the motion files with ``MotionAdapter.from_single_file``.

Tolerance: max |ours - diffusers| <= 1e-4 * max |diffusers output|, in fp32 on CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.attention import Attention, attention
from models.config import MotionConfig, UNetConfig
from models.motion_module import MotionModules
from models.unet import UNetModel
from tests.oracle import diffusers_unet_config
from tests.test_motion_parity import (
    load_diffusers_adapter,
    load_our_motion,
    max_err,
    patch_motion_norms,
    random_state_dict,
    single_thread,  # noqa: F401 (autouse fixture)
    write_motion_file,
)

os.environ["HF_HUB_OFFLINE"] = "1"

diffusers = pytest.importorskip("diffusers")

PREFIX = "model.diffusion_model."
FRAMES = 4
TOLERANCE = 1e-4  # relative to max |reference output|


def unet_shapes(cfg: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an SD1.x LDM UNet (docs/checkpoints.md §1.3, §3, widths from ``cfg``), without prefix."""
    emb, ctx = cfg.time_embed_dim, cfg.context_dim
    shapes: dict[str, tuple[int, ...]] = {}

    def res(p: str, cin: int, c: int) -> None:
        shapes.update({p + "in_layers.0.weight": (cin,), p + "in_layers.0.bias": (cin,)})
        shapes.update({p + "in_layers.2.weight": (c, cin, 3, 3), p + "in_layers.2.bias": (c,)})
        shapes.update({p + "emb_layers.1.weight": (c, emb), p + "emb_layers.1.bias": (c,)})
        shapes.update({p + "out_layers.0.weight": (c,), p + "out_layers.0.bias": (c,)})
        shapes.update({p + "out_layers.3.weight": (c, c, 3, 3), p + "out_layers.3.bias": (c,)})
        if cin != c:
            shapes.update({p + "skip_connection.weight": (c, cin, 1, 1), p + "skip_connection.bias": (c,)})

    def st(p: str, c: int) -> None:
        shapes.update({p + "norm.weight": (c,), p + "norm.bias": (c,)})
        shapes.update({p + "proj_in.weight": (c, c, 1, 1), p + "proj_in.bias": (c,)})
        q = p + "transformer_blocks.0."
        shapes.update({q + f"attn1.to_{n}.weight": (c, c) for n in "qkv"})
        shapes.update(
            {q + "attn2.to_q.weight": (c, c), q + "attn2.to_k.weight": (c, ctx), q + "attn2.to_v.weight": (c, ctx)}
        )
        for a in ("attn1", "attn2"):
            shapes.update({q + f"{a}.to_out.0.weight": (c, c), q + f"{a}.to_out.0.bias": (c,)})
        shapes.update({q + "ff.net.0.proj.weight": (8 * c, c), q + "ff.net.0.proj.bias": (8 * c,)})
        shapes.update({q + "ff.net.2.weight": (c, 4 * c), q + "ff.net.2.bias": (c,)})
        shapes.update({q + f"norm{i}.{w}": (c,) for i in (1, 2, 3) for w in ("weight", "bias")})
        shapes.update({p + "proj_out.weight": (c, c, 1, 1), p + "proj_out.bias": (c,)})

    mc, ch, levels = cfg.model_channels, cfg.block_channels, len(cfg.block_channels)
    shapes.update({"time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,)})
    shapes.update({"time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,)})
    shapes.update({"input_blocks.0.0.weight": (mc, cfg.in_channels, 3, 3), "input_blocks.0.0.bias": (mc,)})
    n, cin, skips = 1, mc, [mc]
    for level in range(levels):
        for _ in range(cfg.num_res_blocks):
            res(f"input_blocks.{n}.0.", cin, ch[level])
            cin = ch[level]
            if level in cfg.attention_levels:
                st(f"input_blocks.{n}.1.", cin)
            skips.append(cin)
            n += 1
        if level < levels - 1:
            shapes.update({f"input_blocks.{n}.0.op.weight": (cin, cin, 3, 3), f"input_blocks.{n}.0.op.bias": (cin,)})
            skips.append(cin)
            n += 1
    res("middle_block.0.", cin, cin)
    st("middle_block.1.", cin)
    res("middle_block.2.", cin, cin)
    n, cur = 0, cin
    for level in reversed(range(levels)):
        for j in range(cfg.num_res_blocks + 1):
            res(f"output_blocks.{n}.0.", cur + skips.pop(), ch[level])
            cur, k = ch[level], 1
            if level in cfg.attention_levels:
                st(f"output_blocks.{n}.1.", cur)
                k = 2
            if level > 0 and j == cfg.num_res_blocks:
                shapes.update({f"output_blocks.{n}.{k}.conv.weight": (cur, cur, 3, 3)})
                shapes.update({f"output_blocks.{n}.{k}.conv.bias": (cur,)})
            n += 1
    shapes.update({"out.0.weight": (cur,), "out.0.bias": (cur,)})
    shapes.update({"out.2.weight": (cfg.out_channels, cur, 3, 3), "out.2.bias": (cfg.out_channels,)})
    return shapes


def load_our_unet(path: Path, cfg: UNetConfig) -> UNetModel:
    unet = UNetModel(cfg)
    sd = {k.removeprefix(PREFIX): v for k, v in load_file(str(path)).items() if k.startswith(PREFIX)}
    unet.load_state_dict(sd, strict=True)
    return unet.eval()


class JointFrameGroupNorm(nn.Module):
    """Oracle patch for v1 only (docs/checkpoints.md §2.5, §4.4): AnimateDiff v1 ran the UNet's ResNet GroupNorms and
    ``conv_norm_out`` on ``[b, c, f, h, w]`` (statistics shared by all frames), while diffusers normalises each frame.
    This wrapper gives diffusers' norm the frames of each video at once."""

    def __init__(self, norm: nn.GroupNorm, num_frames: int):
        super().__init__()
        self.norm, self.num_frames = norm, num_frames

    def forward(self, x: Tensor) -> Tensor:  # [(b f), c, h, w]
        y = self.norm(rearrange(x, "(b f) c h w -> b c f h w", f=self.num_frames))
        return rearrange(y, "b c f h w -> (b f) c h w")


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory) -> tuple[UNetConfig, Path, Path]:
    """(config, UNet file, diffusers config dir with ``unet/config.json``)."""
    root = tmp_path_factory.mktemp("unet")
    cfg = UNetConfig.tiny()
    sd = {PREFIX + k: v for k, v in random_state_dict(unet_shapes(cfg), seed=0).items()}
    path = root / "sd15_tiny.safetensors"
    save_file(sd, str(path))
    (root / "config" / "unet").mkdir(parents=True)
    (root / "config" / "unet" / "config.json").write_text(json.dumps(diffusers_unet_config(cfg)))
    return cfg, path, root / "config"


@pytest.fixture(scope="module")
def ours(unet_file) -> UNetModel:
    cfg, path, _ = unet_file
    return load_our_unet(path, cfg)


@pytest.fixture(scope="module")
def theirs(unet_file) -> nn.Module:
    _, path, config_dir = unet_file
    unet = diffusers.UNet2DConditionModel.from_single_file(
        str(path), config=str(config_dir), subfolder="unet", local_files_only=True
    )
    return unet.eval()


@pytest.fixture(scope="module")
def inputs(unet_file) -> dict[str, Tensor]:
    cfg, _, _ = unet_file
    gen = torch.Generator().manual_seed(1)
    return dict(
        video=torch.randn(2, cfg.in_channels, FRAMES, 16, 16, generator=gen),  # frames differ
        t=torch.tensor([37, 801]),
        context=torch.randn(2, 7, cfg.context_dim, generator=gen),
    )


def test_file_loads_strict(unet_file, ours):
    cfg, path, _ = unet_file
    sd = load_file(str(path))
    state = ours.state_dict()
    assert {PREFIX + k for k in state} == set(sd)
    assert all(torch.equal(v, sd[PREFIX + k]) for k, v in state.items())


def test_image_matches_diffusers(ours, theirs, inputs):
    x = inputs["video"][:, :, 0]  # [b, c, h, w]
    with torch.no_grad():
        out = ours(x, inputs["t"], inputs["context"])
        ref = theirs(x, inputs["t"], encoder_hidden_states=inputs["context"]).sample
    err, scale = max_err(out, ref)
    print(f"image UNet: max|ours - diffusers| {err:.2e}, max|diffusers| {scale:.2f}")
    assert out.shape == x.shape
    assert err <= TOLERANCE * scale


@pytest.fixture(scope="module")
def per_frame_image(ours, inputs) -> Tensor:
    """Our UNet on the video's frames as independent images ``[(b f), c, h, w]`` (no motion modules)."""
    x, t, context = inputs["video"], inputs["t"], inputs["context"]
    with torch.no_grad():
        return ours(
            rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(FRAMES), context.repeat_interleave(FRAMES, 0)
        )


@pytest.mark.parametrize("version", [1, 2, 3])
def test_video_matches_diffusers(ours, theirs, inputs, per_frame_image, tmp_path, version):
    """AnimateDiff v1/v2/v3 UNet on a [b, c, f, h, w] video against diffusers' UNetMotionModel, patched to compute
    the original SD1.5 AnimateDiff: per-frame motion-module GroupNorm (all versions) and, for v1, cross-frame ResNet
    and output GroupNorms (see PerFrameGroupNorm and JointFrameGroupNorm)."""
    cfg = MotionConfig.tiny(version)
    mm_path = write_motion_file(tmp_path / f"mm_v{version}.safetensors", cfg, seed=10 + version)
    motion = load_our_motion(mm_path, cfg)
    adapter = load_diffusers_adapter(mm_path, cfg, tmp_path / "adapter")
    reference = diffusers.UNetMotionModel.from_unet2d(theirs, adapter).eval()
    assert patch_motion_norms(reference) == (21 if version == 2 else 20)
    if version == 1:
        for m in list(reference.modules()):
            if type(m).__name__ == "ResnetBlock2D":
                m.norm1 = JointFrameGroupNorm(m.norm1, FRAMES)
                m.norm2 = JointFrameGroupNorm(m.norm2, FRAMES)
        reference.conv_norm_out = JointFrameGroupNorm(reference.conv_norm_out, FRAMES)

    x, t, context = inputs["video"], inputs["t"], inputs["context"]
    with torch.no_grad():
        out = ours(x, t, context, motion)
        # diffusers' UNetMotionModel (0.42) expects the text context already repeated per frame, [(b f), n, d]
        ref = reference(x, t, encoder_hidden_states=context.repeat_interleave(FRAMES, 0)).sample
    err, scale = max_err(out, ref)
    print(f"video UNet v{version}: max|ours - diffusers| {err:.2e}, max|diffusers| {scale:.2f}")
    assert out.shape == x.shape
    assert err <= TOLERANCE * scale
    # the motion modules must matter, or the comparison would not test them
    assert max_err(rearrange(out, "b c f h w -> (b f) c h w"), per_frame_image)[0] > 1e-2 * scale


def test_video_without_motion_is_per_frame_image(ours, inputs, per_frame_image):
    """A 5-D input without motion modules runs the image UNet on every frame; a per-frame context
    ``[b, f, n, d]`` (here each video's context repeated) gives each frame its own row."""
    x, t, context = inputs["video"], inputs["t"], inputs["context"]
    with torch.no_grad():
        video = ours(x, t, context[:, None].expand(-1, FRAMES, -1, -1))
    torch.testing.assert_close(rearrange(video, "b c f h w -> (b f) c h w"), per_frame_image, atol=1e-5, rtol=1e-5)


def no_positions_processor(attn, x, context):
    """Temporal attention without the sinusoidal positions: stands in for a sliding-window processor."""
    return attn.to_out(attention(attn.to_q(x), attn.to_k(x), attn.to_v(x), attn.heads))


def test_too_many_frames_raises_unless_processors_handle_positions(ours, unet_file):
    cfg, _, _ = unet_file
    motion = MotionModules(MotionConfig.tiny(1)).eval()  # 24 positions
    x, context = torch.randn(1, cfg.in_channels, 25, 8, 8), torch.zeros(1, 7, cfg.context_dim)
    with pytest.raises(ValueError, match=r"frame position 24 is beyond this motion module's 24 positions"):
        ours(x, 10, context, motion)
    layers = [m for m in motion.modules() if isinstance(m, Attention)]
    assert len(layers) == 40
    for layer in layers:
        layer.processor = no_positions_processor
    with torch.no_grad():
        assert ours(x, 10, context, motion).shape == x.shape


def test_motion_mismatch_raises(ours, unet_file):
    cfg, _, _ = unet_file
    context = torch.zeros(1, 7, cfg.context_dim)
    motion = MotionModules(MotionConfig.for_version(3, (32, 64, 128, 256)))
    with pytest.raises(ValueError, match=r"\(32, 64, 128, 256\).*\(32, 64, 128, 128\)"):
        ours(torch.zeros(1, cfg.in_channels, 2, 16, 16), 10, context, motion)
    with pytest.raises(ValueError, match="video input"):
        ours(torch.zeros(1, cfg.in_channels, 16, 16), 10, context, MotionModules(MotionConfig.tiny(3)))
