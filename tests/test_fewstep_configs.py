"""Hydra: model=animatelcm and model=lightning set their motion module, sampler, steps and guidance (the command line
still wins); sampler=lcm / euler exist beside ddim; a sweep over model=sd15,animatelcm,lightning composes; the CLI
runs end to end with LCM on the tiny models, and an inversion under LCM is refused before the run folder exists."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from animatezero.hub import parse_hub_reference
from experiments import common
from experiments import generate as gen

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def cfg_of(root, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(root, overrides=list(overrides))


@pytest.mark.parametrize(
    "model,motion,sampler",
    [
        ("animatelcm", "wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v.ckpt", ("lcm", 6, 2.0)),
        (
            "lightning",
            "ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_comfyui.safetensors",
            ("euler", 4, 1.0),
        ),
        ("sd15", "guoyww/animatediff/mm_sd_v15_v2.ckpt", ("ddim", 25, 7.5)),
    ],
)
@pytest.mark.parametrize("root", ["generate", "sweep"])
def test_few_step_models_set_their_recipe(root, model, motion, sampler):
    base = ["prompt=x"] if root == "generate" else []
    cfg = cfg_of(root, *base, f"model={model}")
    assert OmegaConf.to_container(cfg, resolve=True) is not None
    assert cfg.motion.checkpoint == motion and parse_hub_reference(motion) is not None
    assert (cfg.sampler.name, cfg.sampler.steps, cfg.sampler.guidance_scale) == sampler
    common.check_sampler(cfg.sampler)
    if model == "animatelcm":  # the spatial LCM LoRA (model.lora, loaded by the LoRA loader)
        assert list(cfg.model.lora) == ["hf://wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors:0.8"]
    assert set(cfg.model) == set(cfg_of(root, *base).model)  # a whole model group option, as sd15's
    over = cfg_of(root, *base, f"model={model}", "sampler.steps=4", "sampler.guidance_scale=1.0")
    assert (over.sampler.steps, over.sampler.guidance_scale) == (4, 1.0)


@pytest.mark.parametrize("name", ["lcm", "euler"])
def test_sampler_group_options(name):
    cfg = cfg_of("generate", "prompt=x", f"sampler={name}")
    ddim = cfg_of("generate", "prompt=x")
    assert cfg.sampler.name == name and set(cfg.sampler) == set(ddim.sampler)  # every sampler has the same keys
    common.check_sampler(cfg.sampler)


def test_check_sampler_refusals():
    cfg = cfg_of("generate", "prompt=x", "sampler=lcm")
    with pytest.raises(ValueError, match="image= needs an inversion: the lcm sampler draws fresh noise"):
        common.check_sampler(cfg.sampler, "image=")
    common.check_sampler(cfg_of("generate", "prompt=x", "sampler=euler").sampler, "extend=")  # deterministic: fine
    bad = cfg_of("generate", "prompt=x", "sampler.name=dpm")
    with pytest.raises(ValueError, match="sampler 'dpm' is not supported: use sampler=ddim | lcm | euler"):
        common.check_sampler(bad.sampler)


def test_cli_runs_lcm_and_refuses_its_inversion_up_front(tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    tiny = ["debug=tiny", f"paths.cache_dir={cache}", "sampler.name=lcm", "sampler.guidance_scale=1.0"]
    cfg = cfg_of("generate", *gen.quote_text_overrides([*tiny, "prompt=a cat", "seed=3", f"out_dir={out}"]))
    assert gen.generate(cfg) == out
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["image_info"]["sampler"] == "lcm"
    assert run["quick_metrics"]["first_frame_psnr"] > 40
    refused = tmp_path / "refused"
    cfg = cfg_of("generate", *gen.quote_text_overrides([*tiny, "prompt=a cat", "extend=1", f"out_dir={refused}"]))
    with pytest.raises(ValueError, match="extend= needs an inversion"):
        gen.generate(cfg)
    assert not refused.exists()
