"""SD1.5 LoRAs (models/lora.py): every layout against diffusers' ``load_lora_weights`` + ``fuse_lora`` (peft), the
merge formula on the weights, stacking, scale 0, changing LoRAs on a loaded pipeline, every refusal, and the CLI.

Both sides load the same files: a tiny synthetic SD1.5 single file (``models.synthetic``, real key layout) and
synthetic LoRAs written in each real layout (``models.synthetic.write_lora``). Tolerance: max |ours - diffusers| <=
1e-5 * max |diffusers| in fp32; every parity case also checks that the LoRA changed the output (so a LoRA silently
ignored on both sides cannot pass).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from animatezero.pipeline import AnimateZeroPipeline
from models.config import CLIPTextConfig, UNetConfig
from models.keymap import unet_diffusers_to_ldm, unet_ldm_to_diffusers, unet_module_map
from models.loading import build_on_meta, load_sd15
from models.lora import LoRAError, LoRAMerger, parse_lora, read_lora
from models.readers import CheckpointError, KeyMismatchError, WrongFamilyError
from models.synthetic import save_state_dict, write_lora
from models.unet import UNetModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REL = 1e-5
UNET, CLIP = UNetConfig.tiny(), CLIPTextConfig.tiny()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny synthetic SD1.5 + motion files and the diffusers config folder for them."""
    from tests import oracle

    root = tmp_path_factory.mktemp("lora_base")
    files = oracle.synthetic_checkpoints("tiny", root, log=lambda *_: None)
    return files, oracle.write_config_dir(files, root / "config")


def diffusers_pipe(base):
    from tests import oracle

    files, config = base
    return oracle.build_stable_diffusion(files, config)


def inputs():
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, UNET.context_dim, generator=g)
    ids = torch.randint(0, 49406, (1, 77), generator=g)
    return x, context, ids


@torch.no_grad()
def ours_out(unet, text_encoder):
    x, context, ids = inputs()
    return unet(x, torch.tensor([500.0]), context), text_encoder(ids)


@torch.no_grad()
def diffusers_out(pipe):
    x, context, ids = inputs()
    return pipe.unet(x, 500, encoder_hidden_states=context).sample, pipe.text_encoder(ids).last_hidden_state


def rel(a, b) -> float:
    from tests.oracle import max_err

    return max_err(a, b)["rel"]


def merged(base, loras):
    unet, _, text_encoder = load_sd15(base[0].sd15)
    LoRAMerger({"unet": unet, "text_encoder": text_encoder}).set([(read_lora(p), s) for p, s in loras])
    return unet, text_encoder


def fuse(pipe, path, scale):
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()  # keeps the fused weights


# ------------------------------------------------------------------------------------------------------ key map
@pytest.mark.parametrize("cfg", [UNetConfig(), UNET], ids=["sd15", "tiny"])
def test_keymap_equals_diffusers_conversion(cfg):
    """Every UNet tensor goes where diffusers' own LDM converter puts it (each key gets a distinct value)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from tests.oracle import diffusers_unet_config

    keys = list(build_on_meta(lambda: UNetModel(cfg)).state_dict())
    sd = {"model.diffusion_model." + k: torch.tensor([float(i)]) for i, k in enumerate(keys)}
    converted = convert_ldm_unet_checkpoint(sd, diffusers_unet_config(cfg))
    assert len(converted) == len(keys)
    for diffusers_key, value in converted.items():
        module, param = diffusers_key.rsplit(".", 1)
        ldm = keys[int(value.item())]
        assert f"{unet_diffusers_to_ldm(module, cfg)}.{param}" == ldm, diffusers_key
        assert unet_ldm_to_diffusers(ldm.rsplit(".", 1)[0], cfg) == module
    modules = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".weight")}
    assert set(unet_module_map(cfg, sorted(modules)).values()) == modules
    assert unet_diffusers_to_ldm("down_blocks.3.attentions.0.proj_in", cfg) is None  # level 3 has no attention


# ------------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    ("style", "conv"), [("kohya", True), ("peft", True), ("diffusers", False)], ids=["kohya", "peft", "diffusers"]
)
def test_layout_matches_diffusers_fuse_lora(base, tmp_path, style, conv):
    """UNet (attention, ff, proj, and with conv the 3x3 ResNet/sampler convs) and text encoder, kohya with alpha."""
    path = tmp_path / f"{style}.safetensors"
    sd = write_lora(path, style, UNET, CLIP, rank=4, conv=conv, seed=1)
    lora = read_lora(path)
    assert set(lora.targets) == {"unet", "text_encoder"} and lora.num_targets == len(sd) // (3 if style == "kohya" else 2)
    unet, text_encoder = merged(base, [(path, 0.7)])
    pipe = diffusers_pipe(base)
    plain = diffusers_out(pipe)
    fuse(pipe, path, 0.7)
    ref = diffusers_out(pipe)
    for ours, theirs, before in zip(ours_out(unet, text_encoder), ref, plain):
        assert rel(ours, theirs) <= REL
        assert rel(before, theirs) > 1e-3  # the LoRA changed the output


def test_animatediff_adapter_layout(base, tmp_path):
    """v3_sd15_adapter.ckpt: the processor layout without ``unet.`` (diffusers' loader ignores it silently, so the
    reference reads the same tensors with the prefix added), merged as AnimateDiff does: W += scale * up @ down."""
    path = tmp_path / "v3_sd15_adapter.ckpt"
    sd = write_lora(path, "animatediff_adapter", UNET, CLIP, rank=8, seed=2)
    assert read_lora(path).layouts == ("AnimateDiff adapter",)
    unet, text_encoder = merged(base, [(path, 0.9)])
    prefixed = tmp_path / "prefixed.safetensors"
    save_state_dict({"unet." + k: v for k, v in sd.items()}, prefixed)
    pipe = diffusers_pipe(base)
    plain = diffusers_out(pipe)
    fuse(pipe, prefixed, 0.9)
    ours, ref = ours_out(unet, text_encoder), diffusers_out(pipe)
    assert rel(ours[0], ref[0]) <= REL and rel(plain[0], ref[0]) > 1e-3
    assert torch.equal(ours[1], plain[1])  # the adapter has no text-encoder part
    # and the weights follow AnimateDiff's rule (no alpha): to_out -> to_out.0
    base_unet, _, _ = load_sd15(base[0].sd15)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora"
    target = "input_blocks.4.1.transformer_blocks.0.attn2.to_out.0.weight"
    expected = base_unet.get_parameter(target) + 0.9 * sd[key + ".up.weight"] @ sd[key + ".down.weight"]
    torch.testing.assert_close(unet.get_parameter(target), expected, rtol=0, atol=1e-6)


def test_merged_weights_follow_the_formula(base, tmp_path):
    """W = W_base + scale * alpha / rank * up @ down, for a kohya text-encoder v_proj (a module diffusers' text-encoder
    path was seen to skip), a 3x3 ResNet conv (up [out, r, 1, 1] @ down [r, in, 3, 3]) and a 1x1 proj_in."""
    path = tmp_path / "kohya.safetensors"
    sd = write_lora(path, "kohya", UNET, CLIP, rank=4, alpha=3.0, conv=True, seed=3)
    unet, text_encoder = merged(base, [(path, 0.6)])
    base_unet, _, base_te = load_sd15(base[0].sd15)
    cases = [
        (text_encoder, base_te, "lora_te_text_model_encoder_layers_1_self_attn_v_proj",
         "text_model.encoder.layers.1.self_attn.v_proj.weight"),
        (unet, base_unet, "lora_unet_up_blocks_1_resnets_2_conv1", "output_blocks.5.0.in_layers.2.weight"),
        (unet, base_unet, "lora_unet_mid_block_attentions_0_proj_in", "middle_block.1.proj_in.weight"),
        (unet, base_unet, "lora_unet_down_blocks_0_downsamplers_0_conv", "input_blocks.3.0.op.weight"),
    ]  # fmt: skip
    for model, reference, key, weight in cases:
        w = reference.get_parameter(weight)
        up, down = sd[key + ".lora_up.weight"], sd[key + ".lora_down.weight"]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
        torch.testing.assert_close(model.get_parameter(weight), w + 0.6 * 3.0 / 4 * delta, rtol=0, atol=1e-6)
        assert not torch.equal(model.get_parameter(weight), w)


def test_animatelcm_style_lora_follows_its_loader(base, tmp_path):
    """AnimateLCM's spatial LoRA: kohya keys on attentions and ResNets (time_emb_proj, conv_shortcut, 3x3 convs), no
    text encoder; its loader merges ``W += scale / 8 * up @ down``, which alpha / rank gives for alpha = rank / 8."""
    path = tmp_path / "AnimateLCM_sd15_t2v_lora.safetensors"
    sd = write_lora(path, "kohya", UNET, CLIP, rank=8, alpha=1.0, conv=True, text_encoder=False, seed=15)
    assert set(read_lora(path).targets) == {"unet"}
    unet, _ = merged(base, [(path, 0.8)])
    base_unet, _, _ = load_sd15(base[0].sd15)
    for key, weight in (("lora_unet_down_blocks_1_resnets_0_time_emb_proj", "input_blocks.4.0.emb_layers.1.weight"),
                        ("lora_unet_down_blocks_1_resnets_0_conv_shortcut", "input_blocks.4.0.skip_connection.weight"),
                        ("lora_unet_up_blocks_3_resnets_0_conv2", "output_blocks.9.0.out_layers.3.weight")):  # fmt: skip
        w = base_unet.get_parameter(weight)
        up, down = sd[key + ".lora_up.weight"].flatten(1), sd[key + ".lora_down.weight"].flatten(1)
        expected = w + 1 / 8 * 0.8 * (up @ down).reshape(w.shape)
        torch.testing.assert_close(unet.get_parameter(weight), expected, rtol=0, atol=1e-6)


def test_stacking_two_loras_matches_diffusers(base, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_lora(a, "kohya", UNET, CLIP, rank=4, conv=True, seed=4)
    write_lora(b, "peft", UNET, CLIP, rank=2, seed=5)
    unet, text_encoder = merged(base, [(a, 0.8), (b, -0.5)])
    pipe = diffusers_pipe(base)
    fuse(pipe, a, 0.8)
    fuse(pipe, b, -0.5)
    for ours, theirs in zip(ours_out(unet, text_encoder), diffusers_out(pipe)):
        assert rel(ours, theirs) <= REL
    only_a = ours_out(*merged(base, [(a, 0.8)]))
    assert rel(only_a[0], ours_out(unet, text_encoder)[0]) > 1e-3  # b did something


def test_scale_zero_is_no_lora(base, tmp_path):
    path = tmp_path / "k.safetensors"
    write_lora(path, "kohya", UNET, CLIP, conv=True, seed=6)
    unet, text_encoder = merged(base, [(path, 0.0)])
    base_unet, _, base_te = load_sd15(base[0].sd15)
    for ours, reference in ((unet, base_unet), (text_encoder, base_te)):
        for (name, p), q in zip(ours.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(p, q), name


# --------------------------------------------------------------------------------------------- on a pipeline
def weights(pipe):
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_set_loras_changes_and_restores_exactly(base, tmp_path, dtype):
    files = base[0]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_lora(a, "kohya", UNET, CLIP, conv=True, seed=7)
    write_lora(b, "diffusers", UNET, CLIP, seed=8)
    plain = weights(AnimateZeroPipeline.from_single_files(files.sd15, files.motion, dtype=dtype))
    pipe = AnimateZeroPipeline.from_single_files(files.sd15, files.motion, dtype=dtype, loras=[(a, 0.8)])
    with_a = weights(pipe)
    assert not same(with_a, plain) and pipe.loras == [(str(a), 0.8)]
    touched = pipe.set_loras([(b, 1.2)])
    assert touched and all(t.startswith(("unet:", "text_encoder:")) for t in touched)
    fresh_b = weights(AnimateZeroPipeline.from_single_files(files.sd15, files.motion, dtype=dtype, loras=[(b, 1.2)]))
    assert same(weights(pipe), fresh_b)  # as if loaded with b only: a's deltas are gone
    pipe.set_loras([(a, 0.8)])
    assert same(weights(pipe), with_a)
    pipe.set_loras([])
    assert same(weights(pipe), plain) and pipe.loras == []  # the base weights, bit for bit
    assert pipe._lora_merger.base == {}  # and no base copies kept once nothing is merged


def test_failed_set_loras_changes_nothing(base, tmp_path):
    files = base[0]
    good, bad = tmp_path / "good.safetensors", tmp_path / "wide.safetensors"
    write_lora(good, "kohya", UNET, CLIP, seed=9)
    write_lora(bad, "kohya", UNetConfig(model_channels=64, context_dim=64), CLIP, seed=9)
    pipe = AnimateZeroPipeline.from_single_files(files.sd15, loras=[(good, 1.0)])
    before = weights(pipe)
    with pytest.raises(KeyMismatchError, match="wrong shapes"):
        pipe.set_loras([(good, 0.5), (bad, 1.0)])
    with pytest.raises(FileNotFoundError, match=r"loras\[1\]"):
        pipe.set_loras([(good, 0.5), (tmp_path / "missing.safetensors", 1.0)])
    with pytest.raises(ValueError, match="not a finite number"):
        pipe.set_loras([(good, float("nan"))])
    assert same(weights(pipe), before) and pipe.loras == [(str(good), 1.0)]


def test_toyworld_passes_loras_through(tmp_path):
    from animatezero import toyworld

    checkpoint, _ = toyworld.files()
    if not Path(checkpoint).is_file():
        pytest.fail(f"the shipped toy-world checkpoint is missing: {checkpoint}")
    unet, _, text_encoder = load_sd15(checkpoint)
    path = tmp_path / "tw.safetensors"
    layers = text_encoder.text_model.encoder.layers
    clip = CLIPTextConfig(width=layers[0].mlp.fc1.in_features, layers=len(layers), heads=layers[0].self_attn.heads,
                          mlp_dim=layers[0].mlp.fc1.out_features)  # fmt: skip
    write_lora(path, "kohya", unet.config, clip, seed=10)
    pipe = AnimateZeroPipeline.toyworld(loras=[(path, 0.5)])
    assert pipe.loras == [(str(path), 0.5)]
    assert not torch.equal(pipe.unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight,
                           unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q.weight)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ refusals
def test_sdxl_lora_is_refused(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    write_lora(path, "sdxl_kohya")
    with pytest.raises(WrongFamilyError, match="SDXL LoRA.*lora_te1_"):
        read_lora(path)


def test_sdxl_widths_in_sd15_names_are_refused(base, tmp_path):
    """A LoRA with SD1.5 names but 2048-wide cross-attention (an SDXL-width file renamed) fails on its shapes."""
    path = tmp_path / "wide.safetensors"
    r = 4
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_state_dict({key + ".lora_down.weight": torch.randn(r, 2048), key + ".lora_up.weight": torch.randn(32, r)}, path)
    unet, _, text_encoder = load_sd15(base[0].sd15)
    with pytest.raises(KeyMismatchError, match=r"(?s)wrong shapes.*attn2_to_k.*\[4, 2048\].*SD2/SDXL"):
        LoRAMerger({"unet": unet, "text_encoder": text_encoder}).set([(read_lora(path), 1.0)])


def test_wrong_shapes_and_unknown_targets_are_listed(base, tmp_path):
    path = tmp_path / "mixed.safetensors"
    sd = write_lora(path, "peft", UNET, CLIP, seed=11)
    r = 4
    sd["unet.down_blocks.3.attentions.0.proj_in.lora_A.weight"] = torch.randn(r, 128)  # level 3 has no attention
    sd["unet.down_blocks.3.attentions.0.proj_in.lora_B.weight"] = torch.randn(128, r)
    sd["unet.mid_block.attentions.0.proj_out.lora_A.weight"] = torch.randn(r, 64, 1, 1)  # 128 wide in the tiny UNet
    save_state_dict(sd, path)
    unet, _, text_encoder = load_sd15(base[0].sd15)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(KeyMismatchError) as e:
        LoRAMerger({"unet": unet, "text_encoder": text_encoder}).set([(read_lora(path), 1.0)])
    message = str(e.value)
    assert "targets that do not exist (1)" in message and "down_blocks.3.attentions.0.proj_in" in message
    assert "wrong shapes (1)" in message and "mid_block.attentions.0.proj_out" in message
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())  # nothing merged


def test_unknown_keys_and_broken_pairs_are_refused():
    down, up = torch.randn(4, 32), torch.randn(32, 4)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    with pytest.raises(KeyMismatchError, match="keys of no known LoRA layout.*\n    something.else"):
        parse_lora({name + ".lora_down.weight": down, name + ".lora_up.weight": up, "something.else": up})
    with pytest.raises(LoRAError, match="no up matrix"):
        parse_lora({name + ".lora_down.weight": down})
    with pytest.raises(LoRAError, match="ranks differ"):
        parse_lora({name + ".lora_down.weight": down, name + ".lora_up.weight": torch.randn(32, 3)})
    with pytest.raises(LoRAError, match="LoHa"):
        parse_lora({name + ".hada_w1_a": down})
    with pytest.raises(LoRAError, match="no LoRA weights"):
        parse_lora({})


def test_nan_in_a_lora_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "nan.safetensors"
    sd = write_lora(path, "kohya", UNET, CLIP, seed=12)
    key = "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2.lora_up.weight"
    sd[key][0, 0] = float("nan")
    save_state_dict(sd, path)
    with pytest.raises(LoRAError, match=f"{key}: NaN or infinite"):
        read_lora(path)


def test_other_files_given_as_a_lora_and_a_lora_given_as_checkpoint(base, tmp_path):
    files = base[0]
    with pytest.raises(WrongFamilyError, match="full SD1.5 checkpoint"):
        read_lora(files.sd15)
    with pytest.raises(WrongFamilyError, match="motion module"):
        read_lora(files.motion)
    path = tmp_path / "style.safetensors"
    write_lora(path, "kohya", UNET, CLIP)
    with pytest.raises(WrongFamilyError, match=r"it is a LoRA.*lora='?\[style\.safetensors:0\.8\]"):
        load_sd15(path)
    with pytest.raises(CheckpointError, match="does not start like a torch checkpoint|corrupt"):
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes(b"not a checkpoint")
        read_lora(bad)


# ------------------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("a.safetensors:0.8", ("a.safetensors", 0.8)),
        ("b.safetensors", ("b.safetensors", 1.0)),
        ("hf://org/repo/x.safetensors@v1:-0.5", ("hf://org/repo/x.safetensors@v1", -0.5)),
        ("C:/loras/x.safetensors", ("C:/loras/x.safetensors", 1.0)),
        ("dir:with:colons/x.safetensors:2", ("dir:with:colons/x.safetensors", 2.0)),
        ({"path": "y.safetensors", "scale": 0.3}, ("y.safetensors", 0.3)),
    ],
)
def test_lora_entry_parsing(entry, expected):
    from experiments.cli import parse_lora_entry

    assert parse_lora_entry(entry) == expected


@pytest.mark.parametrize("entry", ["", "x.safetensors:nan", {"scale": 1.0}])
def test_bad_lora_entries_are_refused(entry):
    from experiments.cli import ConfigError, parse_lora_entry

    with pytest.raises(ConfigError, match="lora="):
        parse_lora_entry(entry)


def test_generate_with_loras_records_them(tmp_path):
    """``animatezero debug=tiny lora=[...]``: merged, and run.json names each file with its SHA-256 and scale."""
    from experiments import generate as gen
    from tests.test_cli import sha256, tiny_cfg

    cache = tmp_path / "cache"
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_lora(a, "kohya", UNET, CLIP, seed=13)
    write_lora(b, "peft", UNET, CLIP, seed=14)
    out = tmp_path / "run"
    cfg = tiny_cfg(cache, "prompt=a cat", f"out_dir={out}", f"lora=[{a}:0.8,{b}]")
    gen.generate(cfg)
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoints"]["lora_0"] == {"ref": str(a), "path": str(a), "sha256": sha256(a), "scale": 0.8}
    assert run["checkpoints"]["lora_1"]["sha256"] == sha256(b) and run["checkpoints"]["lora_1"]["scale"] == 1.0
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"lora\[0\]=.*nope.safetensors does not exist"):
        gen.generate(tiny_cfg(cache, "prompt=a cat", f"out_dir={tmp_path / 'run2'}", f"lora=[{missing}]"))
    assert not (tmp_path / "run2").exists()


def test_sweep_fingerprint_covers_lora_files_and_scales(tmp_path):
    """A finished sweep item made with another LoRA file or scale is not taken as done."""
    from hydra import compose, initialize_config_dir

    from experiments import common, sweep

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = compose("sweep", overrides=["debug=tiny", "prompts=smoke"])
    items = common.prompt_items(cfg.prompts)[:1]
    configurations = common.sweep_configurations(cfg)
    record = {"checkpoint": {"sha256": "c"}, "motion_module": {"sha256": "m"}}

    def fingerprint(sha: str, scale: float) -> str:
        checkpoints = record | {"lora_0": {"ref": "x", "path": "x", "sha256": sha, "scale": scale}}
        (fp,) = sweep.plan(cfg, tmp_path, items, configurations, checkpoints).values()
        return fp

    assert fingerprint("a", 0.8) == fingerprint("a", 0.8)
    assert len({fingerprint("a", 0.8), fingerprint("a", 0.5), fingerprint("b", 0.8)}) == 3
    (plain,) = sweep.plan(cfg, tmp_path, items, configurations, record).values()
    assert plain != fingerprint("a", 0.8)
