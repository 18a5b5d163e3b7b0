"""AnimateDiff motion modules vs diffusers, both loaded from the same synthetic checkpoint file.

The file is written from the key/shape recipe in docs/checkpoints.md §3 (not from our module), at the tiny widths of
``MotionConfig.tiny()``, with random non-zero weights (a zero ``proj_out`` would make every module the identity).
The helpers here are also used by ``test_unet_parity.py``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.config import MotionConfig
from models.motion_module import MotionModules, merge_motion_lora
from tests.oracle import patch_motion_norms

os.environ["HF_HUB_OFFLINE"] = "1"

diffusers = pytest.importorskip("diffusers")

FRAMES = 5


# ----------------------------------------------------------------------------------------------------------------
# Synthetic checkpoints


def random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Norm weights (the only 1-D weights) near 1, biases small, matrices/convs ~ N(0, 1/fan_in)."""
    noise = torch.randn(shape, generator=gen)
    if key.endswith(".weight") and len(shape) == 1:
        return 1.0 + 0.1 * noise
    if key.endswith(".bias"):
        return 0.1 * noise
    return noise / math.sqrt(math.prod(shape[1:]))


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {key: random_tensor(key, shape, gen) for key, shape in shapes.items()}


def reference_pe(length: int, dim: int) -> Tensor:
    """AnimateDiff ``PositionalEncoding.pe`` ``[1, L, C]``: sin (even), cos (odd); docs/checkpoints.md §2.3."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def motion_module_prefixes(cfg: MotionConfig) -> dict[str, int]:
    """Module prefix -> channels: down levels, the v2 mid block, up levels (docs/checkpoints.md §2.2)."""
    ch = cfg.block_channels
    prefixes = {f"down_blocks.{i}.motion_modules.{j}.": c for i, c in enumerate(ch) for j in range(2)}
    if cfg.mid_block:
        prefixes["mid_block.motion_modules.0."] = ch[-1]
    prefixes |= {f"up_blocks.{i}.motion_modules.{j}.": c for i, c in enumerate(reversed(ch)) for j in range(3)}
    return prefixes


def motion_shapes(cfg: MotionConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a motion-module file without ``pos_encoder.pe`` (docs/checkpoints.md §2.2, §3)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for p, c in motion_module_prefixes(cfg).items():
        t = p + "temporal_transformer."
        b = t + "transformer_blocks.0."
        shapes |= {
            t + "norm.weight": (c,),
            t + "norm.bias": (c,),
            t + "proj_in.weight": (c, c),
            t + "proj_in.bias": (c,),
        }
        for a in (0, 1):
            q = b + f"attention_blocks.{a}."
            shapes |= {q + f"to_{n}.weight": (c, c) for n in "qkv"}
            shapes |= {q + "to_out.0.weight": (c, c), q + "to_out.0.bias": (c,)}
            shapes |= {b + f"norms.{a}.weight": (c,), b + f"norms.{a}.bias": (c,)}
        shapes |= {b + "ff.net.0.proj.weight": (8 * c, c), b + "ff.net.0.proj.bias": (8 * c,)}
        shapes |= {b + "ff.net.2.weight": (c, 4 * c), b + "ff.net.2.bias": (c,)}
        shapes |= {b + "ff_norm.weight": (c,), b + "ff_norm.bias": (c,)}
        shapes |= {t + "proj_out.weight": (c, c), t + "proj_out.bias": (c,)}
    return shapes


def write_motion_file(path: Path, cfg: MotionConfig, seed: int) -> Path:
    """A motion-module ``.safetensors`` with the real keys, random weights and the stored ``pe`` tables."""
    sd = random_state_dict(motion_shapes(cfg), seed)
    for p, c in motion_module_prefixes(cfg).items():
        for a in (0, 1):
            key = p + f"temporal_transformer.transformer_blocks.0.attention_blocks.{a}.pos_encoder.pe"
            sd[key] = reference_pe(cfg.max_positions, c)
    save_file(sd, str(path))
    return path


def load_our_motion(path: Path, cfg: MotionConfig) -> MotionModules:
    """What a loader does: check each stored ``pe`` against ours, drop it, then load strictly."""
    motion = MotionModules(cfg)
    sd = load_file(str(path))
    buffers = dict(motion.named_buffers())
    for key in [k for k in sd if k.endswith(".pos_encoder.pe")]:
        torch.testing.assert_close(sd.pop(key), buffers[key], atol=1e-6, rtol=0)
    motion.load_state_dict(sd, strict=True)
    return motion.eval()


def load_diffusers_adapter(path: Path, cfg: MotionConfig, config_dir: Path) -> nn.Module:
    """diffusers ``MotionAdapter`` from the same file; the config dir mirrors docs/checkpoints.md §4.1."""
    adapter_cfg = dict(
        block_out_channels=list(cfg.block_channels),
        motion_layers_per_block=cfg.layers_per_block,
        motion_num_attention_heads=cfg.num_heads,
        motion_norm_num_groups=cfg.norm_groups,
        motion_max_seq_length=cfg.max_positions,
        use_motion_mid_block=cfg.mid_block,
    )
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter", **adapter_cfg}))
    adapter = diffusers.MotionAdapter.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    return adapter.eval()


def max_err(ours: Tensor, ref: Tensor) -> tuple[float, float]:
    """(max |ours - ref|, max |ref|)."""
    return (ours - ref).abs().max().item(), ref.abs().max().item()


# ----------------------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models are dominated by per-op overhead; with intra-op threads on a busy machine every op waits for the
    other threads to be scheduled (measured here: a tiny UNet forward took 5 s with 2 threads, 0.6 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[int, tuple[MotionConfig, Path]]:
    """One synthetic motion-module file per version: (config, path)."""
    root = tmp_path_factory.mktemp("motion")
    out = {}
    for version in (1, 2, 3):
        cfg = MotionConfig.tiny(version)
        out[version] = (cfg, write_motion_file(root / f"mm_v{version}.safetensors", cfg, seed=100 + version))
    return out


@pytest.fixture(scope="module")
def ours(files) -> dict[int, MotionModules]:
    """Our modules loaded from each file (tests that modify weights take a deepcopy)."""
    return {version: load_our_motion(path, cfg) for version, (cfg, path) in files.items()}


@pytest.fixture(scope="module")
def adapter_v2(files, tmp_path_factory) -> nn.Module:
    cfg, path = files[2]
    return load_diffusers_adapter(path, cfg, tmp_path_factory.mktemp("adapter_v2"))


@pytest.mark.parametrize("version", [1, 2, 3])
def test_strict_load_matches_file(files, ours, version):
    cfg, path = files[version]
    sd = {k: v for k, v in load_file(str(path)).items() if not k.endswith(".pos_encoder.pe")}
    state = ours[version].state_dict()
    assert set(state) == set(sd) == set(motion_shapes(cfg))
    assert all(torch.equal(state[k], sd[k]) for k in sd)
    assert (ours[version].mid_block is not None) == (version == 2)


def test_modules_match_diffusers(files, ours, adapter_v2):
    """v2 modules at each kind of place (down, mid, up) against diffusers' module at the same path, on
    frame-varying input (all 21 are exercised in place by the video UNet test in test_unet_parity.py).

    Measured: max |ours - diffusers| over each module's residual branch f(x) = out - x, relative to max |f(x)|."""
    cfg, _ = files[2]
    adapter = copy.deepcopy(adapter_v2)
    first = adapter.down_blocks[0].motion_modules[0]
    x0 = torch.randn(2 * FRAMES, cfg.block_channels[0], 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unpatched = first(x0, num_frames=FRAMES)
    assert patch_motion_norms(adapter) == len(motion_module_prefixes(cfg))
    with torch.no_grad():
        err, scale = max_err(ours[2].down_blocks[0].motion_modules[0](x0, FRAMES), unpatched)
    assert err > 1e-2 * scale, "diffusers' joint-frame motion GroupNorm should differ from the SD1.5 per-frame one"

    theirs = dict(adapter.named_modules())
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for name in ("down_blocks.0.motion_modules.1", "mid_block.motion_modules.0", "up_blocks.3.motion_modules.2"):
        c = motion_module_prefixes(cfg)[name + "."]
        x = torch.randn(2 * FRAMES, c, 4, 6, generator=gen) * 2.0 + 0.5  # [(b f), c, h, w]
        with torch.no_grad():
            out = ours[2].get_submodule(name)(x, FRAMES)
            ref = theirs[name](x, num_frames=FRAMES)
        err, scale = max_err(out - x, ref - x)
        assert scale > 0.1, "the synthetic module should not be near the identity"
        assert err <= 1e-4 * scale, name
        worst = max(worst, err / scale)
    print(f"motion modules vs diffusers (patched norm): worst max|d| / max|f(x)| = {worst:.2e}")


def test_zero_proj_out_is_identity(files, ours):
    cfg, _ = files[3]
    module = copy.deepcopy(ours[3].up_blocks[1].motion_modules[2])
    with torch.no_grad():
        module.temporal_transformer.proj_out.weight.zero_()
        module.temporal_transformer.proj_out.bias.zero_()
        x = torch.randn(3 * 4, cfg.block_channels[2], 4, 4)
        assert torch.equal(module(x, 4), x)


def test_batch_not_multiple_of_frames_raises(files, ours):
    cfg, _ = files[3]
    with pytest.raises(ValueError, match="multiple of num_frames"):
        ours[3].down_blocks[0].motion_modules[0](torch.randn(7, cfg.block_channels[0], 2, 2), 4)


def lora_state_dict(cfg: MotionConfig, rank: int, seed: int) -> dict[str, Tensor]:
    """A MotionLoRA in AnimateDiff's format (docs/checkpoints.md §2.6, §3), small random down/up."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for p, c in motion_module_prefixes(cfg).items():
        for a in (0, 1):
            for n in ("to_q", "to_k", "to_v", "to_out"):
                key = p + f"temporal_transformer.transformer_blocks.0.attention_blocks.{a}.processor.{n}_lora."
                sd[key + "down.weight"] = torch.randn(rank, c, generator=gen) / math.sqrt(c)
                sd[key + "up.weight"] = torch.randn(c, rank, generator=gen) * 0.1
    return sd


def lora_target(key: str) -> str:
    """The weight a LoRA key patches, by AnimateDiff's own rule (``convert_motion_lora_ckpt_to_diffusers``)."""
    key = key.replace("processor.", "").replace("_lora", "").replace("down.", "").replace("up.", "")
    return key.replace("to_out.", "to_out.0.")


def to_diffusers_name(key: str) -> str:
    """Motion-module key -> diffusers ``UNetMotionModel`` key (docs/checkpoints.md §2.2)."""
    key = key.replace(".temporal_transformer", "")
    return key.replace("attention_blocks.0", "attn1").replace("attention_blocks.1", "attn2")


def test_merge_motion_lora_matches_formula_and_diffusers(files, ours, adapter_v2):
    """W' = W + alpha * up @ down on all 168 (v2) targets, nothing else changes; and diffusers + peft
    (``load_lora_adapter`` + ``fuse_lora(lora_scale=alpha)``) fuse the same LoRA into the same weights."""
    pytest.importorskip("peft")
    cfg, _ = files[2]
    motion = copy.deepcopy(ours[2])
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    lora = lora_state_dict(cfg, rank=4, seed=7)
    merged = merge_motion_lora(motion, lora, alpha=0.8)
    assert len(merged) == len(lora) // 2 == len(motion_module_prefixes(cfg)) * 8
    after = motion.state_dict()
    for key in before:
        if key not in merged:
            assert torch.equal(after[key], before[key]), key
    for down_key in (k for k in lora if k.endswith(".down.weight")):
        up, down = lora[down_key.replace(".down.", ".up.")], lora[down_key]
        target = lora_target(down_key)
        assert target in merged
        torch.testing.assert_close(after[target], before[target] + 0.8 * up @ down, atol=1e-6, rtol=0)

    # diffusers needs a UNetMotionModel for LoRA (MotionAdapter has no adapter API); its spatial part is irrelevant
    unet2d = diffusers.UNet2DConditionModel(
        block_out_channels=cfg.block_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=8,
    )
    unet = diffusers.UNetMotionModel.from_unet2d(unet2d, copy.deepcopy(adapter_v2))
    peft_sd = {}
    for key, value in lora.items():
        key = to_diffusers_name(key).replace(".processor", "").replace("to_out_lora", "to_out.0_lora")
        peft_sd[key.replace("_lora.down", ".lora_A").replace("_lora.up", ".lora_B")] = value
    unet.load_lora_adapter(peft_sd, adapter_name="motion_lora", prefix=None)
    unet.fuse_lora(lora_scale=0.8)
    theirs = unet.state_dict()
    worst = 0.0
    for key in merged:
        dkey = to_diffusers_name(key)
        dkey = dkey if dkey in theirs else dkey.replace(".weight", ".base_layer.weight")
        worst = max(worst, (theirs[dkey] - after[key]).abs().max().item())
    print(f"merge_motion_lora vs diffusers fuse_lora: max|dW| {worst:.2e}")
    assert worst <= 1e-6


def test_merge_motion_lora_errors(files, ours):
    cfg3, _ = files[3]
    motion = copy.deepcopy(ours[3])
    before = {k: v.clone() for k, v in motion.state_dict().items()}
    v2_lora = lora_state_dict(MotionConfig.tiny(2), rank=4, seed=1)  # has mid_block entries
    with pytest.raises(ValueError, match="no mid block"):
        merge_motion_lora(motion, v2_lora)
    assert all(torch.equal(v, before[k]) for k, v in motion.state_dict().items()), "nothing merged on error"

    lora = lora_state_dict(cfg3, rank=4, seed=2)
    key = next(k for k in lora if k.endswith("to_k_lora.down.weight"))
    with pytest.raises(ValueError, match="does not give the weight's shape"):
        merge_motion_lora(motion, lora | {key: torch.zeros(4, cfg3.block_channels[0] + 1)})
    with pytest.raises(ValueError, match="lacks its up matrix"):
        merge_motion_lora(motion, {key: lora[key]})
    with pytest.raises(ValueError, match="not a MotionLoRA key"):
        merge_motion_lora(motion, {"down_blocks.0.motion_modules.0.foo.weight": torch.zeros(1)})
