"""Every Hydra config composes, and the values that matter are what the paper / the code expect."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from animatezero.controls import Controls
from animatezero.hub import DEFAULT_CHECKPOINT, DEFAULT_MOTION_MODULE, parse_hub_reference
from evaluation.evaluate import EvalConfig
from experiments import common

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "motion", "sampler", "controls", "prompts", "paths", "wandb", "launcher", "debug", "experiment")
ROOTS = ("generate", "sweep", "evaluate")
PAPER_GALLERY = [
    "1girl, underwater, swimsuit",
    "1girl, black jacket, long sleeves",
    "dark fantasy, purple eyes",
    "school uniform, JK, sketch",
    "pixel art, cat ears, blonde hair",
    "a cat head, look to one side",
    "waves hit the beach",
    "freckles, orange hair, glasses",
    "lighter, flame, candle",
]


@pytest.fixture(scope="module", autouse=True)
def hydra_initialized():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        yield


def compose_cfg(name: str, overrides=(), hydra_config: bool = False):
    return compose(name, overrides=list(overrides), return_hydra_config=hydra_config)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def launcher_plugin_missing() -> bool:
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return True
    return False


ALL = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options_and_every_yaml_is_known():
    for group in GROUPS:
        assert options(group), group
    known = {f"{g}/{o}.yaml" for g, o in ALL} | {f"{r}.yaml" for r in ROOTS} | {"hydra/default.yaml"}
    on_disk = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")}
    assert on_disk == known


@pytest.mark.parametrize(("group", "option"), ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_every_option_composes_in_the_sweep_config(group, option):
    if group == "launcher" and option != "local" and launcher_plugin_missing():
        pytest.skip("hydra-submitit-launcher is not installed")
    cfg = compose_cfg("sweep", [f"{group}={option}"], hydra_config=group == "launcher")
    # Everything except Hydra's own runtime values resolves.
    resolved = OmegaConf.to_container(cfg, resolve=True) if group != "launcher" else cfg
    assert resolved is not None
    if group in ("model", "motion", "sampler", "prompts", "controls"):
        assert cfg[group] is not None


@pytest.mark.parametrize("root", ["generate", "sweep"])
def test_defaults_are_the_paper_setup(root):
    cfg = compose_cfg(root, ["prompt=x"] if root == "generate" else [])
    assert cfg.checkpoint == cfg.model.checkpoint == DEFAULT_CHECKPOINT
    assert cfg.motion_module == cfg.motion.checkpoint == DEFAULT_MOTION_MODULE
    assert cfg.model.device == "auto" and cfg.model.dtype == "auto" and cfg.model.synthetic is None
    s = cfg.sampler
    assert (s.name, s.steps, s.guidance_scale, s.eta, s.num_frames, s.height, s.width, s.fps) == (
        "ddim",
        25,
        7.5,
        0.0,
        16,
        512,
        512,
        8,
    )
    assert common.controls_from_group(cfg.controls) == ("paper", Controls.paper())
    assert cfg.wandb.mode == "offline"
    assert dict(cfg.paths.run_files) == {
        "image": "image.png",
        "video": "video.mp4",
        "gif": "video.gif",
        "frames": "frames",
    }


def test_generate_prompt_is_mandatory_and_aliases_follow_groups():
    cfg = compose_cfg("generate")
    assert OmegaConf.is_missing(cfg, "prompt")
    cfg = compose_cfg("generate", ["prompt=x", "model.checkpoint=a.safetensors", "sampler.seed=5", "motion=v3_sd15_mm"])
    assert (cfg.checkpoint, cfg.seed, cfg.motion_module) == ("a.safetensors", 5, "guoyww/animatediff/v3_sd15_mm.ckpt")
    cfg = compose_cfg("generate", ["prompt=x", "checkpoint=b.ckpt", "seed=null"])
    assert cfg.checkpoint == "b.ckpt" and cfg.seed is None


@pytest.mark.parametrize("name", options("controls"))
def test_controls_files_equal_the_python_presets(name):
    cfg = compose_cfg("generate", ["prompt=x", f"controls={name}"])
    label, controls = common.controls_from_group(cfg.controls)
    assert label == name
    assert controls == Controls.preset(name)
    assert set(cfg.controls) - {"name"} == set(common.CONTROL_FIELDS)  # every field spelled out


@pytest.mark.parametrize("name", options("controls"))
def test_controls_presets_hold_only_changed_controls_fields(name):
    """The defaults live in the Controls dataclass alone: a preset file lists only Controls fields, each one changing
    the value of the preset it starts from (``/schema/controls`` = the dataclass defaults, configs/__init__.py)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONFIGS / "controls" / f"{name}.yaml"))
    (base_name,) = [d for d in raw.pop("defaults") if d != "_self_"]
    assert raw.pop("name") == name and set(raw) <= set(common.CONTROL_FIELDS), sorted(set(raw) - {"name"})
    base = Controls() if base_name == "/schema/controls@_here_" else Controls.preset(base_name)
    for field, value in raw.items():
        assert (tuple(value) if isinstance(value, list) else value) != getattr(base, field), (name, field)


def test_controls_field_override_changes_the_label():
    cfg = compose_cfg("generate", ["prompt=x", "controls.window_size=4", "controls.kv_steps=[0.0,0.5]"])
    label, controls = common.controls_from_group(cfg.controls)
    assert controls == Controls.preset("paper", window_size=4, kv_steps=(0.0, 0.5))
    assert label == "paper+kv_steps=0.0-0.5+window_size=4"


@pytest.mark.parametrize("name", options("motion"))
def test_motion_modules_are_hub_references(name):
    cfg = compose_cfg("generate", ["prompt=x", f"motion={name}"])
    repo, filename, revision = parse_hub_reference(cfg.motion.checkpoint)
    assert (repo, filename, revision) == ("guoyww/animatediff", f"{name}.ckpt", None)
    assert cfg.motion.version == {"mm_sd_v14": 1, "mm_sd_v15": 1, "mm_sd_v15_v2": 2, "v3_sd15_mm": 3}[name]


@pytest.mark.parametrize("name", options("prompts"))
def test_prompt_sets_have_unique_ids_and_fixed_seeds(name):
    cfg = compose_cfg("sweep", [f"prompts={name}"])
    items = common.prompt_items(cfg.prompts)
    assert cfg.prompts.name == name and items
    assert len({it["id"] for it in items}) == len(items)
    assert all(isinstance(it["seed"], int) and it["prompt"] for it in items)


def test_gallery_holds_the_paper_prompts():
    cfg = compose_cfg("sweep", ["prompts=gallery"])
    assert [it["prompt"] for it in common.prompt_items(cfg.prompts)] == PAPER_GALLERY


EXPERIMENTS = {
    "t2v_table": ({"animatediff": Controls.animatediff(), "animatezero": Controls.paper()}, "t2v_bench"),
    "ablation_fig6": ({f"ablation{i}": Controls.ablation(i) for i in range(1, 6)}, "gallery"),
    "ablation_window": ({f"window{w}": Controls(window_size=w) for w in (2, 4, 8, 16)}, "gallery"),
    "toyworld_ablation": (
        {
            **{f"ablation{k}": Controls.ablation(k) for k in range(1, 6)},
            **{f"window{w}": Controls(window_size=w) for w in (2, 4, 8)},
            **{f"kv_0-{p}": Controls(kv_steps=(0.0, p / 100)) for p in (25, 50, 75)},
            **{f"insert_0-{p}": Controls(insert_steps=(0.0, p / 100)) for p in (25, 50, 75)},
            "kv_concat": Controls(kv_mode="concat"),
            "kv_levels_1-3": Controls(kv_levels=(1, 2, 3)),
            "noise_0.5": Controls(noise_share=0.5),
            "noise_1": Controls(noise_share=1.0),
        },
        "toyworld_eval",
    ),
    "toyworld_kv": (
        {
            "kv_none": Controls(share_kv=False),
            "kv_all": Controls(),
            "kv_50-100": Controls(kv_steps=(0.5, 1.0)),
            "kv_75-100": Controls(kv_steps=(0.75, 1.0)),
            "kv_level_0": Controls(kv_levels=(0,)),
            "kv_levels_1-2": Controls(kv_levels=(1, 2)),
            "kv_current": Controls(kv_source="current"),
        },
        "toyworld_eval",
    ),
    "ablation_position_correction": (
        {
            "no_window": Controls.ablation(3),
            "window_no_correction": Controls(position_correction=False),
            "window_correction": Controls(),
            "window8_no_correction": Controls(window_size=8, position_correction=False),
            "window8_correction": Controls(window_size=8),
        },
        "gallery",
    ),
    "ablation_injection": (
        {
            "kv_none": Controls(share_kv=False),
            "kv_0-25": Controls(kv_steps=(0.0, 0.25)),
            "kv_0-50": Controls(kv_steps=(0.0, 0.5)),
            "kv_0-75": Controls(kv_steps=(0.0, 0.75)),
            "kv_all": Controls(),
        },
        "gallery",
    ),
    "first_frame_fidelity": (
        {
            "animatediff": Controls.animatediff(),
            "insert_only": Controls.ablation(2),
            "animatezero": Controls(),
            "kv_current": Controls(kv_source="current"),
            "kv_concat": Controls(kv_mode="concat"),
        },
        "gallery",
    ),
}


def test_every_experiment_is_checked():
    assert set(options("experiment")) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiments(name):
    expected, prompts = EXPERIMENTS[name]
    cfg = compose_cfg("sweep", [f"experiment={name}"])
    assert cfg.name == name and cfg.prompts.name == prompts
    assert cfg.sweep_dir == f"outputs/sweeps/{name}"
    assert common.sweep_configurations(cfg) == expected
    # debug=tiny on top keeps the experiment but shrinks everything and moves the outputs.
    tiny = compose_cfg("sweep", [f"experiment={name}", "debug=tiny"])
    assert common.sweep_configurations(tiny) == expected
    assert tiny.sweep_dir == f"outputs/debug/sweeps/{name}"


@pytest.mark.parametrize("root", ["generate", "sweep"])
def test_debug_tiny(root):
    cfg = compose_cfg(root, ["debug=tiny", "paths.cache_dir=/cache", *(["prompt=x"] if root == "generate" else [])])
    assert (cfg.model.device, cfg.model.dtype, cfg.model.synthetic, cfg.motion.synthetic) == (
        "cpu",
        "float32",
        "tiny",
        "tiny",
    )
    assert cfg.checkpoint == "/cache/tiny/tiny_sd15.safetensors"
    assert cfg.motion_module == "/cache/tiny/tiny_mm_v2.ckpt"
    assert (cfg.sampler.steps, cfg.sampler.height, cfg.sampler.width, cfg.sampler.num_frames) == (2, 64, 64, 4)
    assert cfg.wandb.mode == "disabled" and cfg.paths.output_root == "outputs/debug"


@pytest.mark.parametrize("root", ROOTS)
def test_hydra_writes_nothing_for_a_single_run(root):
    """No timestamped Hydra folder, no .hydra/, no log file: the entry points make their own output folder after
    checking every value (so a failed argument leaves nothing on disk)."""
    cfg = compose_cfg(root, ["prompt=x"] if root == "generate" else [], hydra_config=True)
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert hydra["run"]["dir"] == "." and hydra["output_subdir"] is None
    assert "file" not in hydra["job_logging"]["handlers"]
    assert hydra["sweep"]["dir"].startswith("${paths.multirun_root}/${hydra.job.name}/${now:")
    assert hydra["job"]["chdir"] is False
    assert cfg.paths.output_root == "outputs" and cfg.paths.multirun_root == "multirun"
    if root == "generate":
        assert hydra["help"]["app_name"] == "animatezero"
        assert cfg.out_dir is None  # made when the job runs: <paths.output_root>/generate/<date>/<time>[_<job>]


@pytest.mark.parametrize("root", ["generate", "sweep"])
def test_top_level_shortcuts_follow_and_set_the_sampler(root):
    from experiments.cli import apply_shortcuts

    base = ["prompt=x"] if root == "generate" else []
    cfg = compose_cfg(root, base)
    assert (cfg.steps, cfg.frames, cfg.guidance, cfg.size) == (25, 16, 7.5, None)  # follow sampler.* by default
    cfg = compose_cfg(root, [*base, "steps=10", "frames=8", "guidance=5", "size=768x512"])
    apply_shortcuts(cfg)
    s = cfg.sampler
    assert (s.steps, s.num_frames, s.guidance_scale, s.width, s.height) == (10, 8, 5, 768, 512)
    assert cfg.steps == 10


@pytest.mark.skipif(launcher_plugin_missing(), reason="hydra-submitit-launcher is not installed")
def test_launchers():
    slurm = compose_cfg("sweep", ["launcher=submitit_slurm"], hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.gpus_per_node == 1
    local = compose_cfg("sweep", ["launcher=local_gpus", "launcher.n_gpus=4"], hydra_config=True)
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
    assert local.hydra.launcher.gpus_per_node == 4
    basic = compose_cfg("sweep", ["launcher=local"], hydra_config=True)
    assert basic.hydra.launcher._target_.endswith("BasicLauncher")


def test_evaluate_config_matches_eval_config():
    cfg = compose_cfg("evaluate")
    assert OmegaConf.is_missing(cfg, "run_dir")
    assert EvalConfig(**OmegaConf.to_container(cfg.eval)) == EvalConfig()
    assert list(cfg.group_by) == ["configuration"]


def test_no_target_strings_in_our_configs():
    for path in CONFIGS.rglob("*.yaml"):
        assert "_target_" not in path.read_text(), path
