"""Our modules' state-dict keys and shapes equal the real checkpoint layouts (models/synthetic.py, written from the
docs/checkpoints.md §3 rules). Full-size modules are built on the meta device: no weight memory is allocated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.clip_text import CLIPTextModel
from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig
from models.loading import build_on_meta
from models.motion_module import MotionModules
from models.synthetic import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    clip_layout,
    ema_key,
    motion_layout,
    motion_lora_layout,
    num_params,
    sd15_layout,
    unet_layout,
    vae_layout,
)
from models.unet import UNetModel
from models.vae import AutoencoderKL


def meta_shapes(factory) -> dict[str, tuple[int, ...]]:
    module = build_on_meta(factory)
    sd = module.state_dict()
    assert all(t.is_meta for t in sd.values()), "full-size layout tests must not allocate weights"
    return {k: tuple(v.shape) for k, v in sd.items()}


def strip(layout: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    assert all(k.startswith(prefix) for k in layout)
    return {k[len(prefix) :]: tuple(v) for k, v in layout.items()}


def assert_same_layout(ours: dict, spec: dict) -> None:
    missing, extra = sorted(spec.keys() - ours.keys()), sorted(ours.keys() - spec.keys())
    assert not missing and not extra, f"missing from module: {missing[:10]}; not in checkpoint: {extra[:10]}"
    wrong = {k: (ours[k], spec[k]) for k in spec if ours[k] != spec[k]}
    assert not wrong, f"shape mismatches (module, checkpoint): {dict(list(wrong.items())[:10])}"


# ------------------------------------------------------------------------------------- the spec's own numbers
def test_sd15_layout_counts_and_params():
    unet, vae, clip = unet_layout(), vae_layout(), clip_layout()
    assert (len(unet), num_params(unet)) == (686, 859_520_964)
    assert (len(vae), num_params(vae)) == (248, 83_653_863)
    assert len(clip) == 197 and len(clip_layout(position_ids=False)) == 196
    assert num_params(clip_layout(position_ids=False)) == 123_060_480
    assert len(sd15_layout()) == 1131
    assert len(sd15_layout(ddpm_buffers=True, ema="scalars")) == 1145
    full = sd15_layout(ema=True)
    assert len(full) == 1131 + 2 + 686
    assert (
        ema_key(UNET_PREFIX + "input_blocks.1.1.proj_in.weight")
        == "model_ema.diffusion_modelinput_blocks11proj_inweight"
    )
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) for k in sd15_layout())


@pytest.mark.parametrize(
    "version, tensors, params_no_pe, params_pe",
    [(1, 560, 417_137_600, 417_982_400), (2, 588, 453_209_280, 454_417_600), (3, 560, 417_137_600, 418_264_000)],
)
def test_motion_layout_counts_and_params(version, tensors, params_no_pe, params_pe):
    cfg = MotionConfig.for_version(version)
    with_pe, without_pe = motion_layout(cfg), motion_layout(cfg, pe=False)
    assert len(with_pe) == tensors
    assert len(without_pe) == tensors - (42 if version == 2 else 40)
    assert num_params(without_pe) == params_no_pe
    assert num_params(with_pe) == params_pe
    assert any(k.startswith("mid_block.") for k in with_pe) == (version == 2)


def test_motion_lora_layout_counts_and_params():
    lora = motion_lora_layout(MotionConfig.for_version(2), rank=64)
    assert (len(lora), num_params(lora)) == (336, 19_333_120)


# ---------------------------------------------------------------------------- our modules against the spec
@pytest.mark.parametrize("cfg", [UNetConfig(), UNetConfig.tiny()], ids=["sd15", "tiny"])
def test_unet_layout_matches_module(cfg):
    assert_same_layout(meta_shapes(lambda: UNetModel(cfg)), strip(unet_layout(cfg), UNET_PREFIX))


@pytest.mark.parametrize("cfg", [VAEConfig(), VAEConfig.tiny()], ids=["sd15", "tiny"])
def test_vae_layout_matches_module(cfg):
    assert_same_layout(meta_shapes(lambda: AutoencoderKL(cfg)), strip(vae_layout(cfg), VAE_PREFIX))


@pytest.mark.parametrize("cfg", [CLIPTextConfig(), CLIPTextConfig.tiny()], ids=["sd15", "tiny"])
def test_clip_layout_matches_module(cfg):
    # The module has no position_ids buffer (always arange); files may store one, which the loader drops.
    spec = strip(clip_layout(cfg, position_ids=False), "cond_stage_model.transformer.")
    assert_same_layout(meta_shapes(lambda: CLIPTextModel(cfg)), spec)


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("tiny", [False, True], ids=["full", "tiny"])
def test_motion_layout_matches_module(version, tiny):
    cfg = MotionConfig.tiny(version) if tiny else MotionConfig.for_version(version)
    # Everything on meta (the pe tables are computed on the CPU and moved there: on meta the same ops would run slow
    # Python decompositions); loading recomputes pe where the weights land.
    module = build_on_meta(lambda: MotionModules(cfg))
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert all(t.is_meta for t in module.parameters())
    assert_same_layout(shapes, motion_layout(cfg, pe=False))
    # pe is a non-persistent buffer: exactly the file's pe keys, with the file's [1, L, C] shape.
    pe = {k: tuple(b.shape) for k, b in module.named_buffers() if k.endswith("pos_encoder.pe")}
    assert pe == {k: v for k, v in motion_layout(cfg).items() if k.endswith("pos_encoder.pe")}


def test_motion_lora_targets_exist_in_v2_module():
    cfg = MotionConfig.for_version(2)
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: MotionModules(cfg)).state_dict().items()}
    for key, shape in motion_lora_layout(cfg, rank=64).items():
        block, rest = key.split("processor.")
        proj, side = rest.split("_lora.")
        target = block + ("to_out.0" if proj == "to_out" else proj) + ".weight"
        out_dim, in_dim = shapes[target]
        assert shape == ((64, in_dim) if side == "down.weight" else (out_dim, 64)), key


def test_build_on_meta_patches_nothing():
    """Meta construction is scoped to the call: no global function is replaced, and modules built afterwards (or
    outside it) get real, randomly initialised weights."""
    originals = (nn.Module.register_parameter, nn.init.normal_, nn.init.kaiming_uniform_, torch.Tensor.normal_)
    inside = build_on_meta(lambda: nn.Sequential(nn.Linear(4, 4), nn.Embedding(10, 4)))
    assert all(p.is_meta for p in inside.parameters())
    assert (nn.Module.register_parameter, nn.init.normal_, nn.init.kaiming_uniform_, torch.Tensor.normal_) == originals
    after = nn.Embedding(10, 4)
    assert not after.weight.is_meta and after.weight.std() > 0
