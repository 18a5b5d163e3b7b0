"""Weight files built as an adversary would: a pickle that contains itself, expanded views that are bytes on disk
and gigabytes in memory, NaN/inf weights, a damaged digest cache, megabyte key names and headers of 300,000 empty
tensors. Each is refused with one named error before any copy (docs/reliability.md, "Weight files")."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

import models.readers as readers
from animatezero.hub import checkpoint_sha256
from animatezero.pipeline import AnimateZeroPipeline
from experiments import cli
from models.config import MotionConfig
from models.loading import load_motion_lora, load_motion_module, load_sd15
from models.readers import (
    MAX_NESTING,
    MAX_TENSORS,
    CorruptCheckpointError,
    KeyMismatchError,
    NonFiniteWeightsError,
    WrongFamilyError,
    check_finite_tensors,
    check_structure,
    read_state_dict,
)
from models.synthetic import (
    CLIP_PREFIX,
    UNET_PREFIX,
    motion_layout,
    random_state_dict,
    save_state_dict,
    sd15_layout,
    write_motion_lora,
    write_motion_module,
)
from tests.narrow_configs import CLIP_CFG, UNET_CFG, VAE_CFG

MOTION_CFG = MotionConfig.for_version(2, UNET_CFG.block_channels)
POSITION_IDS = CLIP_PREFIX + "embeddings.position_ids"
HUGE_NAME = "x" * (1 << 20)  # a 1 MB key name


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return random_state_dict(sd15_layout(UNET_CFG, VAE_CFG, CLIP_CFG, position_ids=True), seed=3)


@pytest.fixture(scope="module")
def motion_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mm") / "mm.safetensors"
    write_motion_module(path, MOTION_CFG)
    return path


def finishes(fn, seconds: float = 60.0):
    """``fn()``'s exception (or None) if it returns within ``seconds``; a test failure if it hangs (the daemon
    thread is left spinning, and dies with the test process)."""
    outcome = {}

    def target():
        try:
            fn()
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still running after {seconds:.0f} s: the reader hangs")
    return outcome["error"]


def write_safetensors_raw(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# ------------------------------------------------------------------------------------ 1. cycles and nesting
def test_self_referencing_ckpt_is_refused_not_a_hang(tmp_path):
    d = {}
    d["state_dict"] = d  # the one-liner
    torch.save(d, tmp_path / "s.ckpt")
    error = finishes(lambda: read_state_dict(tmp_path / "s.ckpt"))
    assert isinstance(error, CorruptCheckpointError) and "contains itself" in str(error)


def test_two_wrappers_pointing_at_each_other_are_refused(tmp_path):
    a, b = {"global_step": 1}, {"epoch": 2}
    a["state_dict"], b["state_dict"] = b, a
    torch.save(a, tmp_path / "ab.ckpt")
    error = finishes(lambda: read_state_dict(tmp_path / "ab.ckpt"))
    assert isinstance(error, CorruptCheckpointError) and "reference cycle" in str(error)


@pytest.mark.parametrize("where", ["list", "tuple-in-list", "dict-key"])
def test_cycles_anywhere_in_the_container_are_refused(tmp_path, where):
    loop: list = []
    loop.append((loop,) if where == "tuple-in-list" else loop)
    extra = {("k", (1,)): loop} if where == "dict-key" else loop
    torch.save({"w": torch.ones(2), "extra": extra}, tmp_path / "c.ckpt")
    with pytest.raises(CorruptCheckpointError, match="contains itself"):
        read_state_dict(tmp_path / "c.ckpt")


def test_nesting_deeper_than_the_bound_is_refused(tmp_path):
    obj = {"w": torch.ones(2)}
    for _ in range(MAX_NESTING + 4):
        obj = {"state_dict": obj}  # the unwrapping would find the tensor at the bottom
    torch.save(obj, tmp_path / "deep.ckpt")
    with pytest.raises(CorruptCheckpointError, match=f"nest deeper than {MAX_NESTING} levels"):
        read_state_dict(tmp_path / "deep.ckpt")


def test_the_walk_is_iterative_and_lets_shared_containers_through():
    deep: list = []
    for _ in range(100_000):  # a recursive walk would hit RecursionError long before the bound is reported
        deep = [deep]
    with pytest.raises(CorruptCheckpointError, match="nest deeper"):
        check_structure(deep, "x.ckpt")
    shared = {"cfg": [1, 2]}
    check_structure({"a": shared, "b": shared, "c": [shared, (shared,)]}, "x.ckpt")  # a DAG is not a cycle


def test_lightning_style_checkpoint_still_loads(tmp_path):
    sd = {"w": torch.ones(3)}
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"params": [0], "lr": 1e-4}]}
    torch.save({"state_dict": sd, "optimizer_states": [optimizer], "global_step": 7}, tmp_path / "l.ckpt")
    assert list(read_state_dict(tmp_path / "l.ckpt")) == ["w"]


# ------------------------------------------------------------------------------ 2. expanded / overlapping views
def test_zero_stride_view_is_refused_before_any_copy(tmp_path):
    torch.save({"position_ids": torch.zeros(1, dtype=torch.int64).expand(1, 2**33)}, tmp_path / "e.ckpt")
    assert (tmp_path / "e.ckpt").stat().st_size < 4096  # 8 bytes of data that would ask for 64 GB
    with pytest.raises(CorruptCheckpointError, match=r"'position_ids' claims shape \[1, 8589934592\].*only 8 bytes"):
        read_state_dict(tmp_path / "e.ckpt")


def test_expanded_position_ids_in_an_sd15_file_are_refused(tmp_path, tiny_sd):
    sd = {**tiny_sd, POSITION_IDS: torch.zeros(1, dtype=torch.int64).expand(1, 2**20)}  # 8 MB when used
    with pytest.raises(CorruptCheckpointError, match="position_ids' claims shape.*expanded"):
        load_sd15(save_state_dict(sd, tmp_path / "e.ckpt"))


def test_expanded_motion_pe_is_refused(tmp_path):
    sd = random_state_dict(motion_layout(MOTION_CFG))
    key = next(k for k in sd if k.endswith("pos_encoder.pe"))
    sd[key] = sd[key][:, :1].expand(1, 2**16, sd[key].shape[2])
    with pytest.raises(CorruptCheckpointError, match="pos_encoder.pe' claims shape"):
        load_motion_module(save_state_dict(sd, tmp_path / "pe.ckpt"), version=2)


def test_overlapping_views_of_one_storage_are_refused_but_tied_weights_load(tmp_path):
    base = torch.randn(1000)
    torch.save({"a": base[:800], "b": base[100:900]}, tmp_path / "o.ckpt")  # 6,400 bytes claimed, 4,000 stored
    with pytest.raises(CorruptCheckpointError, match="claim 6,400 bytes together but share 4,000"):
        read_state_dict(tmp_path / "o.ckpt")
    w = torch.randn(4, 4)
    torch.save({"embed": w, "tied_head": w, "t": w.t()}, tmp_path / "tied.ckpt")  # one tensor under three names
    assert set(read_state_dict(tmp_path / "tied.ckpt")) == {"embed", "tied_head", "t"}


def test_overlapping_safetensors_offsets_are_refused(tmp_path):
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    write_safetensors_raw(tmp_path / "o.safetensors", {"a": entry, "b": entry}, bytes(16))
    with pytest.raises(CorruptCheckpointError, match="add up to 32 bytes but the data section has 16; tensors overlap"):
        read_state_dict(tmp_path / "o.safetensors")


def test_position_ids_of_another_length_are_ignored_by_shape(tmp_path, tiny_sd):
    sd = {**tiny_sd, POSITION_IDS: torch.arange(100)[None]}  # arange, but the position table has 77 rows
    with pytest.warns(UserWarning, match=r"position_ids have shape \[1, 100\], not \[1, 77\]"):
        load_sd15(save_state_dict(sd, tmp_path / "p.safetensors"))


# ------------------------------------------------------------------------------------------------ 3. NaN / inf
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_tensors_names_each_bad_tensor(dtype, bad):
    tensors = {f"w{i}": torch.randn(50, 7).to(dtype) for i in range(4)}
    tensors["ids"] = torch.arange(5)  # integer tensors cannot hold NaN
    tensors["empty"] = torch.zeros(0, dtype=dtype)
    tensors["big"] = torch.full((3,), torch.finfo(dtype).max, dtype=dtype)  # large but finite
    check_finite_tensors(tensors, "the test weights")
    tensors["w1"][7, 3] = bad
    tensors["w3"][0, 0] = bad
    with pytest.raises(NonFiniteWeightsError, match="(?s)the test weights contain NaN or infinite values in 2 tensor"):
        check_finite_tensors(tensors, "the test weights")
    with pytest.raises(NonFiniteWeightsError, match=r"(?s)\n    file\.w1\n    file\.w3\n"):
        check_finite_tensors(tensors, "x", key_prefix="file.")


def test_nan_in_a_motion_lora_is_refused_at_load_and_nothing_is_merged(tmp_path, motion_file):
    sd = write_motion_lora(tmp_path / "ok.safetensors", MOTION_CFG, rank=4)
    key = sorted(sd)[5]
    sd[key][0, 0] = math.nan
    save_state_dict(sd, tmp_path / "nan.safetensors")
    motion = load_motion_module(motion_file)
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    with pytest.raises(NonFiniteWeightsError, match=f"(?s)MotionLoRA .*nan.safetensors contain NaN.*{key}"):
        load_motion_lora(tmp_path / "nan.safetensors", motion)
    assert all(torch.equal(v, before[k]) for k, v in motion.state_dict().items())


def test_nan_motion_pe_is_named_as_nan(tmp_path):
    sd = random_state_dict(motion_layout(MOTION_CFG))
    key = next(k for k in sd if k.endswith("pos_encoder.pe"))
    sd[key][0, 3, 1] = math.nan
    with pytest.raises(NonFiniteWeightsError, match=f"(?s)contain NaN or infinite values in 1 tensor.*{key}"):
        load_motion_module(save_state_dict(sd, tmp_path / "pe.safetensors"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inf_in_an_sd15_vae_and_a_cast_overflow_are_named(tmp_path, tiny_sd, dtype):
    sd = {k: v.clone() for k, v in tiny_sd.items()}
    vae_key = "first_stage_model.decoder.conv_out.weight"
    sd[vae_key][0, 0, 0, 0] = math.inf
    path = save_state_dict(sd, tmp_path / "inf.safetensors")
    with pytest.raises(NonFiniteWeightsError, match=f"(?s)VAE weights contain NaN or infinite.*{vae_key}"):
        load_sd15(path, dtype=dtype)
    sd[vae_key][0, 0, 0, 0] = 1e6  # finite in float32, infinite in float16
    path = save_state_dict(sd, tmp_path / "big.safetensors")
    if dtype == torch.float16:
        with pytest.raises(
            NonFiniteWeightsError,
            match=f"(?s)in 1 tensor.*finite in the file, overflowing when cast to float16.*{vae_key}",
        ):
            load_sd15(path, dtype=dtype)
    else:
        load_sd15(path, dtype=dtype)


@pytest.mark.parametrize("scale", [math.nan, math.inf, "0.5", True, None])
def test_non_finite_lora_scale_is_refused_before_any_file_is_read(tmp_path, scale):
    missing = tmp_path / "missing.safetensors"  # never opened: the scale is checked first
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        load_motion_lora(missing, torch.nn.Module(), alpha=scale)
    with pytest.raises(ValueError, match="motion_lora_scale must be a finite number"):
        AnimateZeroPipeline.from_single_files(missing, missing, motion_lora=missing, motion_lora_scale=scale)


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "abc"])
def test_cli_lora_scale_is_checked_with_the_other_values(scale):
    with pytest.raises(cli.ConfigError, match=f"motion.lora_scale={scale} must be a finite number"):
        cli.check_values(OmegaConf.create({"motion": {"lora_scale": scale}}))
    cli.check_values(OmegaConf.create({"motion": {"lora_scale": -0.5}}))  # negative reverses the motion: allowed


# --------------------------------------------------------------------------------------- 4. the digest cache
@pytest.mark.parametrize("content", ["[]", "null", '"x"', "7", '{"a": 5}', '{"k": "', "\xff\xfe", ""])
def test_a_damaged_sha256_cache_is_rebuilt_with_a_warning(tmp_path, content):
    ckpt = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(4)}, str(ckpt))
    cache = tmp_path / "cache" / "sha256.json"
    cache.parent.mkdir()
    cache.write_bytes(content.encode("latin-1"))
    expected = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert checkpoint_sha256(ckpt, cache.parent) == expected
    assert len(caught) <= 1 and all("digest cache" in str(w.message) for w in caught)
    data = json.loads(cache.read_text())  # rewritten as a valid cache holding the digest
    assert isinstance(data, dict) and list(data.values()) == [expected]
    assert [p.name for p in cache.parent.iterdir()] == ["sha256.json"]  # nothing half-written beside it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next run is silent
        assert checkpoint_sha256(ckpt, cache.parent) == expected


# --------------------------------------------------------------------------- 5. huge names, huge tensor counts
def test_a_megabyte_key_name_is_shortened_in_every_message(tmp_path, tiny_sd):
    write_safetensors_raw(tmp_path / "h.safetensors", {HUGE_NAME: {"dtype": "F32", "shape": [1]}}, bytes(4))
    with pytest.raises(CorruptCheckpointError) as info:
        read_state_dict(tmp_path / "h.safetensors")
    assert "lacks dtype" in str(info.value) and len(str(info.value)) < 1000
    sd = {**tiny_sd, UNET_PREFIX + HUGE_NAME: torch.zeros(1), HUGE_NAME: torch.zeros(1)}
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyMismatchError) as info:
        warnings.simplefilter("always")
        load_sd15(save_state_dict(sd, tmp_path / "k.safetensors"))
    assert "unexpected in the file (1)" in str(info.value) and len(str(info.value)) < 2000
    assert "1,048,598 characters" in str(info.value)  # says how long the name was
    assert caught and all(len(str(w.message)) < 2000 for w in caught)  # the stray-key warning too
    with pytest.raises(WrongFamilyError) as info:
        load_sd15(save_state_dict({HUGE_NAME: torch.zeros(1)}, tmp_path / "u.safetensors"))
    assert len(str(info.value)) < 1000


def test_a_header_of_too_many_tensors_is_refused_before_they_are_built(tmp_path):
    empty = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    write_safetensors_raw(tmp_path / "z.safetensors", {f"k{i}": empty for i in range(MAX_TENSORS + 1)})
    with pytest.raises(CorruptCheckpointError, match=f"lists more than {MAX_TENSORS:,} tensors"):
        read_state_dict(tmp_path / "z.safetensors")
    # at the limit it is parsed as usual (and then refused for holding nothing)
    write_safetensors_raw(tmp_path / "ok.safetensors", {f"k{i}": empty for i in range(MAX_TENSORS)})
    assert len(readers.check_safetensors_header(tmp_path / "ok.safetensors")) == MAX_TENSORS


def test_a_pickle_of_too_many_tensors_is_refused_from_the_zip_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_TENSORS", 20)
    torch.save({f"k{i}": torch.zeros(1) for i in range(40)}, tmp_path / "many.ckpt")  # 40 storages
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled before the count check"))
    with pytest.raises(CorruptCheckpointError, match="40 tensor storages.*limit 20"):
        read_state_dict(tmp_path / "many.ckpt")


def test_a_pickle_of_many_views_is_refused_by_its_pickle_size(tmp_path, monkeypatch):
    base = torch.zeros(0)
    torch.save({f"k{i}": base[:0] for i in range(2000)}, tmp_path / "views.ckpt")  # one storage, 2,000 views
    monkeypatch.setattr(readers, "MAX_PICKLE_BYTES", 100_000)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled before the size check"))
    with pytest.raises(CorruptCheckpointError, match=r"its pickle \(views/data.pkl\) is .* bytes.*limit 100,000"):
        read_state_dict(tmp_path / "views.ckpt")


def test_real_files_are_far_inside_the_limits():
    from animatezero import toyworld

    for path in toyworld.files():
        header = readers.check_safetensors_header(path)
        assert len(header) < MAX_TENSORS / 5
    assert readers.MAX_SAFETENSORS_HEADER > 100 * 150_000  # a real SD1.5 header is ~150 kB
