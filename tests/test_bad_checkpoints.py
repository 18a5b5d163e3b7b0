"""Bad inputs give a CheckpointError naming what was found and what to do, never a crash, a huge allocation or
code execution. Wrong-family files use minimal synthetic key sets (small tensors), since detection reads only keys
and a few shapes."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct

import pytest
import torch
from safetensors.torch import save_file

from models.config import MotionConfig, UNetConfig
from models.loading import load_motion_lora, load_motion_module, load_sd15, load_vae
from models.readers import (
    MAX_SAFETENSORS_HEADER,
    CheckpointError,
    CorruptCheckpointError,
    KeyMismatchError,
    UnsafeCheckpointError,
    WrongFamilyError,
    check_safetensors_header,
    read_state_dict,
)
from models.synthetic import (
    UNET_PREFIX,
    motion_layout,
    random_state_dict,
    save_state_dict,
    sd15_layout,
    write_motion_lora,
    write_motion_module,
)
from tests.narrow_configs import CLIP_CFG, UNET_CFG, VAE_CFG


def motion_cfg(version: int) -> MotionConfig:
    return MotionConfig.for_version(version, UNET_CFG.block_channels)


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_state_dict(sd15_layout(UNET_CFG, VAE_CFG, CLIP_CFG, position_ids=False), seed=2)


def write_safetensors_raw(path, header: dict, data: bytes, header_len: int | None = None) -> None:
    raw = json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)


# ------------------------------------------------------------------------------------------------ unreadable files
def test_missing_file(tmp_path):
    with pytest.raises(CorruptCheckpointError, match="not found.*does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_directory(tmp_path):
    with pytest.raises(CorruptCheckpointError, match="is a directory.*single-file"):
        load_sd15(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_empty_file(tmp_path, suffix):
    (tmp_path / f"e{suffix}").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=r"empty \(0 bytes\).*fetch it again"):
        read_state_dict(tmp_path / f"e{suffix}")


def test_unknown_suffix(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"abc")
    with pytest.raises(CorruptCheckpointError, match=r"unknown checkpoint suffix '\.onnx'.*expected \.safetensors"):
        read_state_dict(tmp_path / "model.onnx")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_random_bytes(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CorruptCheckpointError) as info:
        read_state_dict(path)
    assert "corrupt" in str(info.value) or "truncated" in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated(tmp_path, tiny_sd, suffix, keep):
    path = save_state_dict(dict(list(tiny_sd.items())[:50]), tmp_path / f"t{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        read_state_dict(path)


def test_truncated_inside_safetensors_header(tmp_path, tiny_sd):
    path = save_state_dict({"a": torch.zeros(3)}, tmp_path / "h.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        read_state_dict(path)


def test_safetensors_huge_header_length(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}" + bytes(100))
    with pytest.raises(CorruptCheckpointError, match=f"exceeds the {MAX_SAFETENSORS_HEADER:,}-byte limit"):
        read_state_dict(path)


def test_safetensors_header_longer_than_file(tmp_path):
    path = tmp_path / "long.safetensors"
    write_safetensors_raw(
        path, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), header_len=5000
    )
    with pytest.raises(CorruptCheckpointError, match="header claims 5,000 bytes but the file has only"):
        read_state_dict(path)


def test_safetensors_offsets_out_of_range(tmp_path):
    path = tmp_path / "offsets.safetensors"
    header = {"a": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}  # 4 GiB claimed, 16 bytes present
    write_safetensors_raw(path, header, bytes(16))
    with pytest.raises(CorruptCheckpointError, match="'a' ends at data byte 4,294,967,296.*only 16 bytes"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}, "invalid data_offsets"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "invalid shape"),
        ({"dtype": "F32", "shape": [2**40], "data_offsets": [0, 16]}, "needs 4,398,046,511,104 bytes"),
        ({"dtype": "F32", "shape": [4]}, "lacks dtype/shape/data_offsets"),
        ("not a dict", "lacks dtype/shape/data_offsets"),
    ],
)
def test_safetensors_crafted_entries(tmp_path, entry, message):
    path = tmp_path / "crafted.safetensors"
    write_safetensors_raw(path, {"a": entry}, bytes(16))
    with pytest.raises(CorruptCheckpointError, match=message):
        check_safetensors_header(path)
    with pytest.raises(CorruptCheckpointError, match=message):
        read_state_dict(path)


def test_safetensors_header_not_json(tmp_path):
    path = tmp_path / "nojson.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{nope}" + bytes(8))
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        read_state_dict(path)


def test_pickle_without_tensors_or_not_a_dict(tmp_path):
    torch.save({"global_step": 3, "animatediff_config": {"a": 1}}, tmp_path / "none.ckpt")
    with pytest.raises(CorruptCheckpointError, match="contains no tensors.*'global_step'"):
        read_state_dict(tmp_path / "none.ckpt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CorruptCheckpointError, match="holds a Tensor, not a dict of tensors"):
        read_state_dict(tmp_path / "tensor.pt")


# -------------------------------------------------------------------------------------- pickles that run code
class _Exploit:
    """Unpickling this would run ``touch <marker>`` (via os.system) if the loader allowed arbitrary globals."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExploitEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize(
    "how",
    ["torch.save", "torch.save-eval", "pickle-protocol2", "pickle-protocol4", "torch.save-legacy"],
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    payload = {"model.diffusion_model.out.2.bias": torch.zeros(4)}
    if how == "torch.save":
        torch.save({**payload, "x": _Exploit(marker)}, path)
    elif how == "torch.save-eval":
        torch.save({"state_dict": {**payload, "x": _ExploitEval(marker)}}, path)
    elif how == "torch.save-legacy":
        torch.save({**payload, "x": _Exploit(marker)}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps({"x": _Exploit(marker)}, protocol=2 if how.endswith("2") else 4))
    for load in (read_state_dict, load_sd15, load_motion_module):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(path)
        msg = str(info.value)
        assert "refused to execute code" in msg and "Nothing in the file was executed" in msg
        assert ("eval" if how.endswith("eval") else "system") in msg  # names what it tried to call
        assert not marker.exists()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- wrong families
def _z(*shape):
    return torch.zeros(shape)


def _sd_like(conv_in_channels=4, context=768, **extra):
    return {
        UNET_PREFIX + "input_blocks.0.0.weight": _z(8, conv_in_channels, 3, 3),
        UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": _z(8, context),
        "first_stage_model.encoder.conv_in.weight": _z(8, 3, 3, 3),
        **extra,
    }


WRONG_FAMILIES = {
    "sdxl": (
        _sd_like(context=2048, **{UNET_PREFIX + "label_emb.0.0.weight": _z(8, 4), "conditioner.embedders.0.x": _z(1)}),
        "SDXL checkpoint.*SD1.5",
    ),
    "sd2": (_sd_like(context=1024), r"Stable Diffusion 2\.x checkpoint \(cross-attention context 1024, expected 768"),
    "sd2-openclip": (_sd_like(**{"cond_stage_model.model.ln_final.weight": _z(8)}), "Stable Diffusion 2.x"),
    "sd15-inpaint": (_sd_like(conv_in_channels=9), "inpainting checkpoint.*9 input channels, expected 4"),
    "vae-only": (
        {"encoder.conv_in.weight": _z(8, 3, 3, 3), "decoder.conv_out.weight": _z(3, 8, 3, 3)},
        "standalone VAE; pass it as vae=",
    ),
    "lora": (
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": _z(4, 8), "lora_te_text_model_x.alpha": _z()},
        "LoRA.*not a full model",
    ),
    "unknown": ({"foo.bar": _z(2)}, "not an SD1.5 or AnimateDiff layout.*foo.bar"),
    "diffusers": ({"down_blocks.0.resnets.0.conv1.weight": _z(2), "conv_in.weight": _z(2)}, "diffusers-format"),
    "pix2pix": (_sd_like(conv_in_channels=8), "8 input channels"),
}


@pytest.mark.parametrize("name", list(WRONG_FAMILIES))
def test_wrong_family_as_sd15(tmp_path, name):
    sd, message = WRONG_FAMILIES[name]
    path = save_state_dict(sd, tmp_path / "x.safetensors")
    with pytest.raises(WrongFamilyError, match=message) as info:
        load_sd15(path)
    assert "is not an SD1.5 checkpoint" in str(info.value)


def test_motion_module_given_as_sd15(tmp_path):
    write_motion_module(tmp_path / "mm.ckpt", motion_cfg(2))
    with pytest.raises(WrongFamilyError, match=r"AnimateDiff motion module \(v2\); pass it as motion_module=") as info:
        load_sd15(tmp_path / "mm.ckpt")
    assert info.value.family == "motion-module"


def test_motion_lora_given_as_sd15_or_motion_module(tmp_path):
    write_motion_lora(tmp_path / "lora.ckpt", motion_cfg(2), rank=4)
    for load in (load_sd15, load_motion_module):
        with pytest.raises(WrongFamilyError, match="MotionLoRA; pass it as motion_lora="):
            load(tmp_path / "lora.ckpt")


def test_sd15_given_as_motion_module_or_lora_or_vae(tmp_path, tiny_sd):
    path = save_state_dict(tiny_sd, tmp_path / "sd.safetensors")
    with pytest.raises(
        WrongFamilyError,
        match="not an AnimateDiff motion module: this is a full SD1.5 checkpoint; pass it as the base model",
    ):
        load_motion_module(path)
    mm_path = tmp_path / "mm.ckpt"
    write_motion_module(mm_path, motion_cfg(2))
    motion = load_motion_module(mm_path)
    with pytest.raises(WrongFamilyError, match="not a MotionLoRA: this is a full SD1.5 checkpoint"):
        load_motion_lora(path, motion)
    with pytest.raises(WrongFamilyError, match="not a MotionLoRA: this looks like an AnimateDiff motion module"):
        load_motion_lora(mm_path, motion)
    with pytest.raises(WrongFamilyError, match="not a VAE: this looks like an AnimateDiff motion module"):
        load_vae(mm_path)


# ------------------------------------------------------------------------------------------ key mismatches
def test_missing_and_unexpected_keys_grouped(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    for k in [k for k in sd if k.startswith(UNET_PREFIX + "output_blocks.11.")]:
        del sd[k]
    sd[UNET_PREFIX + "output_blocks.12.0.in_layers.0.weight"] = _z(32)
    with pytest.raises(KeyMismatchError) as info:
        load_sd15(save_state_dict(sd, tmp_path / "m.safetensors"))
    msg = str(info.value)
    assert "the UNet weights do not match the model" in msg
    assert "missing from the file (38)" in msg and "model.diffusion_model.output_blocks.11.1.* (26)" in msg
    assert "unexpected in the file (1)" in msg and "output_blocks.12.0.in_layers.0.weight" in msg
    assert "inspect_checkpoint.py" in msg


def test_wrong_shape(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    key = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"
    sd[key] = _z(32, 64)
    with pytest.raises(
        KeyMismatchError, match=r"(?s)wrong shapes \(1\).*ff\.net\.2\.weight: file \[32, 64\], model \[32, 128\]"
    ):
        load_sd15(save_state_dict(sd, tmp_path / "m.safetensors"))


def test_stray_top_level_key_is_not_silently_ignored(tmp_path, tiny_sd):
    """Keys outside the three components are not model weights (docs/checkpoints.md §1.1): ignored, with a warning."""
    sd = {**tiny_sd, "lvlb_weights_typo": _z(3)}
    with pytest.warns(
        UserWarning, match="(?s)ignoring 1 keys outside the UNet/VAE/text-encoder prefixes.*lvlb_weights"
    ):
        unet, _, _ = load_sd15(save_state_dict(sd, tmp_path / "m.safetensors"))
    assert unet is not None


def test_no_vae_needs_vae_argument(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(KeyMismatchError, match="no VAE weights.*pass a standalone VAE file as vae="):
        load_sd15(save_state_dict(sd, tmp_path / "novae.safetensors"))


def test_motion_unet_channel_mismatch(tmp_path):
    write_motion_module(tmp_path / "mm.ckpt", motion_cfg(3))
    with pytest.raises(
        CheckpointError, match=r"motion module / UNet mismatch.*\(32, 32, 64, 64\).*\(320, 640, 1280, 1280\)"
    ):
        load_motion_module(tmp_path / "mm.ckpt", unet_config=UNetConfig())


def test_motion_pe_not_matching_formula(tmp_path):
    cfg = motion_cfg(1)
    sd = random_state_dict(motion_layout(cfg))
    key = next(k for k in sd if k.endswith("pos_encoder.pe"))
    sd[key] = sd[key] * 2
    with pytest.raises(CheckpointError, match="differs from the AnimateDiff sinusoid formula"):
        load_motion_module(save_state_dict(sd, tmp_path / "pe.ckpt"))


def test_motion_version_conflict(tmp_path):
    write_motion_module(tmp_path / "mm.ckpt", motion_cfg(1))
    with pytest.raises(CheckpointError, match="looks like a v1 motion module, but version=3 was requested"):
        load_motion_module(tmp_path / "mm.ckpt", version=3)


@pytest.mark.parametrize("version", [1, 3])
def test_v2_motion_lora_on_v1_v3_module(tmp_path, version):
    write_motion_module(tmp_path / "mm.ckpt", motion_cfg(version))
    write_motion_lora(tmp_path / "lora.ckpt", motion_cfg(2), rank=4)
    motion = load_motion_module(tmp_path / "mm.ckpt")
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    with pytest.raises(
        CheckpointError, match=f"MotionLoRA for AnimateDiff v2.*motion module is v{version}, which has no mid block"
    ):
        load_motion_lora(tmp_path / "lora.ckpt", motion)
    assert all(torch.equal(v, before[k]) for k, v in motion.state_dict().items())  # nothing was merged


def test_motion_lora_width_mismatch(tmp_path):
    write_motion_module(tmp_path / "mm.ckpt", motion_cfg(2))
    write_motion_lora(tmp_path / "lora.ckpt", MotionConfig.for_version(2, (64, 64, 128, 128)), rank=4)
    motion = load_motion_module(tmp_path / "mm.ckpt")
    with pytest.raises(CheckpointError, match="motion LoRA / motion module mismatch"):
        load_motion_lora(tmp_path / "lora.ckpt", motion)


def test_safetensors_with_other_metadata_only(tmp_path):
    save_file({}, str(tmp_path / "empty.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CorruptCheckpointError, match="contains no tensors"):
        read_state_dict(tmp_path / "empty.safetensors")
