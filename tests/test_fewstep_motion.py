"""Few-step motion modules (docs/fewstep.md §2): AnimateDiff-Lightning's diffusers ``MotionAdapter`` files load
through the one key map (models.keymap.diffusers_motion_key) into the same modules as the original layout and
compute what diffusers' MotionAdapter computes; AnimateLCM's file (no pos_encoder tables) and Lightning's ComfyUI files
load by name; each brings its sampling recipe as the pipeline's default, which the user can override."""

import copy
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from animatezero.pipeline import AnimateZeroPipeline
from models.config import MotionConfig
from models.families import detect_family, detect_motion_layout, few_step_family
from models.loading import load_motion_module
from models.readers import KeyMismatchError
from models.synthetic import diffusers_motion_layout, motion_layout, write_diffusers_motion_adapter, write_motion_module
from tests.oracle import diffusers_adapter_config, patch_motion_norms

FRAMES = 5


def to_diffusers(sd: dict) -> dict:
    """AnimateDiff names -> MotionAdapter names, by diffusers' own naming (independent of the loader's map): the
    first attention's pe table becomes the block's ``pos_embed.pe``, the second's is dropped."""
    out = {}
    for k, v in sd.items():
        if k.endswith("attention_blocks.1.pos_encoder.pe"):
            continue
        k = k.replace("temporal_transformer.", "").replace("attention_blocks.0.pos_encoder.pe", "pos_embed.pe")
        k = k.replace("attention_blocks.0.", "attn1.").replace("attention_blocks.1.", "attn2.")
        k = k.replace("norms.0.", "norm1.").replace("norms.1.", "norm2.").replace("ff_norm.", "norm3.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def v2_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewstep_mm")
    cfg = MotionConfig.tiny(2)
    original = root / "animatediff_lightning_4step_comfyui.safetensors"
    sd = write_motion_module(original, cfg, seed=5)
    diffusers_file = root / "animatediff_lightning_4step_diffusers.safetensors"
    save_file(to_diffusers(sd), str(diffusers_file))
    return cfg, original, diffusers_file


def test_synthetic_diffusers_layout_is_diffusers_own(tmp_path):
    """The writer's layout is exactly what diffusers' MotionAdapter holds (strict load), and the renamed original
    layout is that layout too."""
    diffusers = pytest.importorskip("diffusers")
    cfg = MotionConfig.tiny(2)
    adapter = diffusers.MotionAdapter(**{k: v for k, v in diffusers_adapter_config(cfg).items() if k != "_class_name"})
    want = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert want == dict(diffusers_motion_layout(cfg))
    assert set(to_diffusers(dict(motion_layout(cfg)))) == set(want)
    sd = write_diffusers_motion_adapter(tmp_path / "adapter.safetensors", cfg, seed=1)
    adapter.load_state_dict(sd, strict=True)  # and its pe tables are diffusers' sinusoid
    assert detect_family(sd) == "motion-module" and detect_motion_layout(sd) == "diffusers"
    assert detect_motion_layout(dict(motion_layout(cfg))) == "animatediff"


def test_diffusers_file_loads_into_the_same_modules(v2_files):
    cfg, original, diffusers_file = v2_files
    a = load_motion_module(original)
    b = load_motion_module(diffusers_file)
    assert a.config == b.config and b.mid_block is not None
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_diffusers_file_computes_what_motion_adapter_computes(tmp_path):
    """Our modules loaded from a MotionAdapter file against diffusers' MotionAdapter from the same file (with the
    per-frame GroupNorm of the SD1.5 modules, docs/checkpoints.md §4.4), at a down, the mid and an up module."""
    diffusers = pytest.importorskip("diffusers")
    cfg = MotionConfig.tiny(2)
    path = tmp_path / "adapter_diffusers.safetensors"
    sd = write_diffusers_motion_adapter(path, cfg, seed=3)
    adapter = diffusers.MotionAdapter(**{k: v for k, v in diffusers_adapter_config(cfg).items() if k != "_class_name"})
    adapter.load_state_dict(sd, strict=True)
    adapter = copy.deepcopy(adapter).eval()
    assert patch_motion_norms(adapter) > 0
    ours = load_motion_module(path)
    theirs = dict(adapter.named_modules())
    gen = torch.Generator().manual_seed(0)
    for name in ("down_blocks.0.motion_modules.1", "mid_block.motion_modules.0", "up_blocks.1.motion_modules.2"):
        c = theirs[name].proj_in.in_features
        x = torch.randn(2 * FRAMES, c, 4, 6, generator=gen) * 2.0 + 0.5  # [(b f), c, h, w]
        with torch.no_grad():
            out = ours.get_submodule(name)(x, FRAMES)
            ref = theirs[name](x, num_frames=FRAMES)
        err, scale = (out - ref).abs().max().item(), (ref - x).abs().max().item()
        assert scale > 0.1 and err <= 1e-4 * scale, (name, err, scale)


def test_bad_diffusers_keys_are_named(tmp_path, v2_files):
    _, _, diffusers_file = v2_files
    sd = load_file(str(diffusers_file))
    sd["down_blocks.0.motion_modules.0.transformer_blocks.0.attn3.to_q.weight"] = torch.zeros(1)
    bad = tmp_path / "bad_diffusers.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(KeyMismatchError, match=r"MotionAdapter file(.|\n)*attn3"):
        load_motion_module(bad)


@pytest.mark.parametrize(
    "name,family",
    [
        ("AnimateLCM_sd15_t2v.ckpt", ("animatelcm", (6, 2.0, "lcm"))),
        (
            "ByteDance/AnimateDiff-Lightning/animatediff_lightning_8step_comfyui.safetensors",
            ("lightning", (8, 1.0, "euler")),
        ),
        ("animatediff_lightning_1step_diffusers.safetensors", ("lightning", (1, 1.0, "euler"))),
        ("mm_sd_v15_v2.ckpt", None),
        ("models/animatelcm/mm_sd_v15_v2.ckpt", None),  # the file's name decides, not its folder
    ],
)
def test_few_step_family_by_name(name, family):
    assert few_step_family(name) == family


@pytest.mark.parametrize("version", [2, 3])
def test_animatelcm_file_without_pe_loads_by_name(tmp_path, version):
    cfg = MotionConfig.tiny(version)
    lcm = tmp_path / "AnimateLCM_sd15_t2v.ckpt"
    write_motion_module(lcm, cfg, seed=4, pe=False)
    assert not any("pos_encoder" in k for k in torch.load(lcm, weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # named AnimateLCM: no "cannot tell v1 from v3" warning
        motion = load_motion_module(lcm)
    assert motion.config.version == version and motion.config.max_positions == 32
    if version == 3:  # the same file under another name is the ambiguous re-saved v1/v3 case
        other = tmp_path / "resaved.ckpt"
        other.write_bytes(lcm.read_bytes())
        with pytest.warns(UserWarning, match=re.escape("cannot be told apart")):
            load_motion_module(other)


def test_few_step_modules_bring_their_sampling_defaults(tiny_files, tmp_path, v2_files):
    cfg, lightning, lightning_diffusers = v2_files
    lcm = tmp_path / "AnimateLCM_sd15_t2v.ckpt"
    write_motion_module(lcm, cfg, seed=4, pe=False)
    pipe = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], lcm)
    assert pipe.default_sampling == (6, 2.0, "lcm")
    assert AnimateZeroPipeline.from_single_files(tiny_files["sd15"], lightning).default_sampling == (4, 1.0, "euler")
    assert AnimateZeroPipeline.from_single_files(tiny_files["sd15"], lightning_diffusers).default_sampling[2] == "euler"
    plain = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], tiny_files["mm_v2"])
    assert plain.default_sampling == (25, 7.5, "ddim")
    # the user overrides: the model's defaults as a whole, or per call
    mine = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], lcm, default_sampling=(25, 7.5))
    assert mine.default_sampling == (25, 7.5, "ddim")
    pipe.progress = False
    image = pipe.text_to_image("a cat", height=64, width=64, seed=0)
    assert image.info["sampler"] == "lcm" and image.steps == 6 and image.guidance_scale == 2.0
    ddim = pipe.text_to_image("a cat", height=64, width=64, seed=0, steps=2, guidance_scale=1.0, sampler="ddim")
    assert ddim.info["sampler"] == "ddim" and ddim.timesteps == [501, 1]
