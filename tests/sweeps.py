"""The sweep tests' config: the sweep on the tiny debug model (its cache folder is conftest's ``tiny_cache``)."""

from pathlib import Path

from hydra import compose, initialize_config_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sweep_cfg(cache, sweep_dir, *overrides, prompts: str = "prompts=smoke"):
    """The sweep config on the tiny debug model, writing to ``sweep_dir``; ``prompts``: the prompt set (a group
    choice or an items override)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(
            "sweep",
            overrides=["debug=tiny", prompts, f"paths.cache_dir={cache}", f"sweep_dir={sweep_dir}", *overrides],
        )
