"""Tiny synthetic checkpoints with the real key layout load into our modules, and the loaded tensors equal the file's.

Covers the container and key variants found in the wild (docs/checkpoints.md §1.1, §1.5, §2.1): safetensors and torch
pickles, fp16/fp32, "state_dict" wrappers, non-tensor entries, missing or float position_ids, EMA and DDPM extras,
the CLIP prefix without ``text_model.``, linear VAE attention weights, standalone VAEs, motion modules v1/v2/v3 and
MotionLoRA merging.
"""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch

from models.attention import sinusoidal_positions
from models.config import MotionConfig
from models.families import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, detect_family, detect_motion_version
from models.loading import load_motion_lora, load_motion_module, load_sd15, load_vae
from models.readers import file_sha256, read_state_dict
from models.synthetic import (
    ema_key,
    motion_layout,
    motion_lora_layout,
    random_state_dict,
    save_state_dict,
    sd15_layout,
    write_motion_lora,
    write_motion_module,
)
from tests.narrow_configs import CLIP_CFG, UNET_CFG, VAE_CFG


def motion_cfg(version: int) -> MotionConfig:
    return MotionConfig.for_version(version, UNET_CFG.block_channels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests are many small ops; on the shared 2-core machine, two intra-op threads mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_sd() -> dict[str, torch.Tensor]:
    """A tiny SD1.5 state dict (fp32) with every optional extra: position_ids, DDPM buffers, full EMA copy."""
    return random_state_dict(sd15_layout(UNET_CFG, VAE_CFG, CLIP_CFG, ddpm_buffers=True, ema=True), seed=1)


def model_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in sd.items() if k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) and "position_ids" not in k
    }


def assert_loaded_equals(modules, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> None:
    """Every parameter of (unet, vae, text encoder) equals the file's tensor converted to ``dtype``."""
    unet, vae, clip = modules
    clip_prefix = "cond_stage_model.transformer."
    for module, prefix in ((unet, UNET_PREFIX), (vae, VAE_PREFIX), (clip, clip_prefix)):
        state = module.state_dict()
        assert state, "module has no weights"
        for k, v in state.items():
            src = sd[prefix + k]
            if src.shape != v.shape:  # linear VAE attention weights stored as [C, C]
                src = src.reshape(v.shape)
            assert v.dtype == dtype, k
            assert torch.equal(v, src.to(dtype)), k


def test_family_of_full_size_layouts():
    """Detection works on shapes alone, so it is checked on the real full-size layouts without any data."""
    assert detect_family(sd15_layout()) == "sd15"
    assert detect_family(sd15_layout(position_ids=False, ddpm_buffers=True, ema=True)) == "sd15"
    for version in (1, 2, 3):
        layout = motion_layout(MotionConfig.for_version(version))
        assert detect_family(layout) == "motion-module"
        assert detect_motion_version(layout) == (version, 24 if version == 1 else 32)
    assert detect_motion_version(motion_layout(MotionConfig.for_version(3), pe=False)) == (None, None)
    assert detect_family(motion_lora_layout(MotionConfig.for_version(2))) == "motion-lora"
    vae = {k: v for k, v in sd15_layout().items() if k.startswith(VAE_PREFIX)}
    assert detect_family(vae) == "vae-only"
    assert detect_family({k[len(VAE_PREFIX) :]: v for k, v in vae.items()}) == "vae-only"


@pytest.mark.parametrize(
    "suffix, file_dtype, target_dtype",
    [
        (".safetensors", torch.float16, torch.float32),
        (".ckpt", torch.float16, torch.float32),
        (".ckpt", torch.float32, torch.bfloat16),
    ],
)
def test_sd15_round_trip(tmp_path, base_sd, suffix, file_dtype, target_dtype):
    sd = {
        k: v.to(file_dtype) if v.is_floating_point() and k.startswith(("model.", "first", "cond")) else v
        for k, v in base_sd.items()
    }
    path = save_state_dict(sd, tmp_path / f"model{suffix}")
    unet, vae, clip = load_sd15(path, dtype=target_dtype)
    assert (unet.config, vae.cfg, clip.cfg) == (UNET_CFG, VAE_CFG, CLIP_CFG)  # widths inferred from the shapes
    # The file also holds DDPM buffers and a full EMA copy (model_ema.*) whose values differ; like AnimateDiff, the
    # non-EMA model.diffusion_model.* is what gets loaded (checked by assert_loaded_equals below).
    key = UNET_PREFIX + "out.2.weight"
    assert ema_key(key) in sd and not torch.equal(sd[key], sd[ema_key(key)].to(file_dtype))
    assert_loaded_equals((unet, vae, clip), sd, target_dtype)
    assert not any(p.requires_grad for p in unet.parameters()) and not unet.training


def test_wrapped_ckpt_with_non_tensor_entries(tmp_path, base_sd):
    sd = model_only(base_sd)
    path = save_state_dict(
        sd, tmp_path / "wrapped.ckpt", wrap_state_dict=True, extra={"note": "x", "cfg": {"a": [1, 2.0]}}
    )
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "global_step", "epoch"} and "note" in raw["state_dict"]
    read = read_state_dict(path)
    assert set(read) == set(sd)  # unwrapped, non-tensors dropped
    assert_loaded_equals(load_sd15(path), sd)


@pytest.mark.parametrize("variant", ["missing", "float", "flat"])
def test_position_ids_variants(tmp_path, base_sd, variant):
    sd = model_only(base_sd)
    key = CLIP_PREFIX + "embeddings.position_ids"
    ids = torch.arange(CLIP_CFG.max_positions)[None]
    if variant == "float":
        sd[key] = ids.float()
    elif variant == "flat":
        sd[key] = ids[0]
    path = save_state_dict(sd, tmp_path / "ids.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a correct stored copy (any dtype) is dropped silently
        assert_loaded_equals(load_sd15(path), sd)


def test_stale_position_ids_warn_and_are_ignored(tmp_path, base_sd):
    sd = model_only(base_sd)
    ids = torch.arange(CLIP_CFG.max_positions, dtype=torch.float32)[None]
    ids[0, 40:] -= 1.0  # e.g. 40.9999 truncated to 40 after a float merge
    sd[CLIP_PREFIX + "embeddings.position_ids"] = ids
    path = save_state_dict(sd, tmp_path / "ids.safetensors")
    with pytest.warns(UserWarning, match="position_ids"):
        assert_loaded_equals(load_sd15(path), sd)


def test_clip_prefix_without_text_model(tmp_path, base_sd):
    sd = {k.replace("transformer.text_model.", "transformer."): v for k, v in model_only(base_sd).items()}
    sd["cond_stage_model.transformer.text_projection.weight"] = torch.zeros(4, 4)  # ignored, on the named list
    sd["cond_stage_model.transformer.logit_scale"] = torch.tensor(4.6)
    unet, vae, clip = load_sd15(save_state_dict(sd, tmp_path / "old.safetensors"))
    for k, v in clip.state_dict().items():
        assert torch.equal(v, sd["cond_stage_model.transformer." + k.removeprefix("text_model.")]), k


def test_linear_vae_attention_weights(tmp_path, base_sd):
    sd = model_only(base_sd)
    keys = [
        k for k in sd if ".mid.attn_1." in k and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))
    ]
    assert len(keys) == 8
    for k in keys:
        sd[k] = sd[k][:, :, 0, 0].clone()
    unet, vae, clip = load_sd15(save_state_dict(sd, tmp_path / "linear_attn.ckpt"))
    assert vae.state_dict()["decoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)
    assert_loaded_equals((unet, vae, clip), sd)


def test_standalone_vae_and_vae_override(tmp_path, base_sd):
    sd = model_only(base_sd)
    vae_sd = {
        k[len(VAE_PREFIX) :]: (v + 1.0 if v.is_floating_point() else v)
        for k, v in sd.items()
        if k.startswith(VAE_PREFIX)
    }
    vae_sd["loss.logvar"] = torch.zeros(())  # training extra, skipped for standalone VAE files
    vae_path = save_state_dict(vae_sd, tmp_path / "vae.safetensors")
    vae = load_vae(vae_path, dtype=torch.float16)
    assert torch.equal(vae.state_dict()["decoder.conv_out.weight"], vae_sd["decoder.conv_out.weight"].half())

    no_vae = {k: v for k, v in sd.items() if not k.startswith(VAE_PREFIX)}  # a "noVAE" community file
    unet, vae, clip = load_sd15(save_state_dict(no_vae, tmp_path / "novae.safetensors"), vae=vae_path)
    assert torch.equal(vae.state_dict()["encoder.conv_in.weight"], vae_sd["encoder.conv_in.weight"])
    assert torch.equal(unet.state_dict()["out.2.weight"], sd[UNET_PREFIX + "out.2.weight"])


def test_renamed_safetensors_and_sha256(tmp_path, base_sd):
    sd = model_only(base_sd)
    path = save_state_dict(sd, tmp_path / "a.safetensors")
    renamed = path.rename(tmp_path / "a.ckpt")
    read = read_state_dict(renamed)
    assert set(read) == set(sd) and all(torch.equal(read[k], sd[k]) for k in sd)
    assert file_sha256(renamed, chunk_size=4096) == hashlib.sha256(renamed.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- motion modules
@pytest.mark.parametrize(
    "version, suffix, dtype, wrap",
    [
        (1, ".ckpt", torch.float32, False),
        (2, ".ckpt", torch.float16, True),
        (3, ".safetensors", torch.float16, False),
        (2, ".safetensors", torch.bfloat16, False),
    ],
)
def test_motion_module_round_trip(tmp_path, version, suffix, dtype, wrap):
    cfg = motion_cfg(version)
    extra = {"animatediff_config": {"version": version}} if suffix == ".ckpt" else None
    sd = write_motion_module(
        tmp_path / f"mm{suffix}", cfg, seed=version, dtype=dtype, wrap_state_dict=wrap, extra=extra
    )
    motion = load_motion_module(tmp_path / f"mm{suffix}", unet_config=UNET_CFG)
    assert motion.config == cfg
    state = motion.state_dict()
    assert set(state) == {k for k in sd if not k.endswith("pos_encoder.pe")}
    for k, v in state.items():
        assert v.dtype == torch.float32 and torch.equal(v, sd[k].float()), k
    assert any(v.abs().sum() > 0 for k, v in state.items() if "proj_out" in k)  # modules are not the identity
    for name, buf in motion.named_buffers():  # pe recomputed from the formula, not taken from the file
        if name.endswith("pos_encoder.pe"):
            ref = sinusoidal_positions(torch.arange(cfg.max_positions), buf.shape[-1])[None]
            assert torch.allclose(buf, ref)


def test_motion_module_without_pe_loads_as_v3_with_warning(tmp_path):
    write_motion_module(tmp_path / "nope.safetensors", motion_cfg(3), pe=False)
    with pytest.warns(UserWarning, match="v3"):
        motion = load_motion_module(tmp_path / "nope.safetensors")
    assert motion.config.version == 3 and motion.config.max_positions == 32
    assert load_motion_module(tmp_path / "nope.safetensors", version=1).config.max_positions == 24


def test_motion_keys_with_prefix_and_other_keys(tmp_path):
    """Like the official loader, only keys containing "motion_modules." are used (training dumps hold a UNet too)."""
    cfg = motion_cfg(2)
    sd = random_state_dict(motion_layout(cfg), seed=3)
    dump = {"unet." + k: v for k, v in sd.items()}
    dump["unet.conv_in.weight"] = torch.zeros(4, 4, 3, 3)
    motion = load_motion_module(save_state_dict(dump, tmp_path / "dump.ckpt"))
    assert torch.equal(
        motion.state_dict()["mid_block.motion_modules.0.temporal_transformer.proj_out.weight"],
        sd["mid_block.motion_modules.0.temporal_transformer.proj_out.weight"],
    )


@pytest.mark.parametrize("alpha, suffix", [(1.0, ".ckpt"), (0.5, ".safetensors")])
def test_motion_lora_merge(tmp_path, alpha, suffix):
    cfg = motion_cfg(2)
    mm = write_motion_module(tmp_path / f"mm{suffix}", cfg, seed=4)
    lora = write_motion_lora(tmp_path / "lora.ckpt", cfg, rank=4, seed=5)
    motion = load_motion_module(tmp_path / f"mm{suffix}")  # tensors may be memory-mapped from the file
    merged = load_motion_lora(tmp_path / "lora.ckpt", motion, alpha=alpha)
    assert len(merged) == len(lora) // 2
    state = motion.state_dict()
    p = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1."
    for proj, target in (("to_q", "to_q"), ("to_out", "to_out.0")):
        up, down = lora[p + f"processor.{proj}_lora.up.weight"], lora[p + f"processor.{proj}_lora.down.weight"]
        expected = mm[p + f"{target}.weight"] + alpha * (up @ down)
        assert torch.allclose(state[p + f"{target}.weight"], expected, atol=1e-6)
    untouched = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    assert torch.equal(state[untouched], mm[untouched])
    reread = read_state_dict(tmp_path / f"mm{suffix}")  # merging in place did not write through to the file
    assert all(torch.equal(reread[k], v) for k, v in mm.items())


def test_inspect_checkpoint_script(tmp_path, base_sd, capsys):
    """scripts/inspect_checkpoint.py's module (``models.inspection``), run in-process (its main() takes argv) to avoid
    a second torch start-up."""
    from models.inspection import main

    good = save_state_dict(base_sd, tmp_path / "good.safetensors")
    assert main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "family: sd15" in out and "UNet: all 684 keys and shapes match" in out
    assert "model_ema.*" in out and "verdict: loads" in out

    bad = dict(model_only(base_sd))
    del bad[UNET_PREFIX + "out.2.weight"]
    assert main([str(save_state_dict(bad, tmp_path / "bad.ckpt"))]) == 1
    out = capsys.readouterr().out
    assert "missing from the file (1)" in out and "out.2.weight" in out and "would NOT load" in out

    write_motion_module(tmp_path / "mm.ckpt", motion_cfg(1))
    assert main([str(tmp_path / "mm.ckpt")]) == 0
    assert "version: v1, pe length 24" in capsys.readouterr().out

    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert main([str(tmp_path / "empty.ckpt")]) == 2  # bad input: exit 2, as every CLI
    assert "empty (0 bytes)" in capsys.readouterr().err
