"""Hydra configs of animatezero (a package so that ``pkg://configs`` finds them in an installed copy).

``${asset:NAME}`` resolves to a file shipped inside the ``animatezero`` package (``animatezero/assets/NAME``), so a
config can name the toy-world weights wherever the package is installed.

``schema/controls`` is every field of :class:`animatezero.controls.Controls` with its default, taken from the dataclass
itself: the one place the defaults are written. ``controls/paper.yaml`` is exactly that (it lists only its name); the
other presets start from it and list only what they change.

Both are registered on import of this package and of ``experiments``.
"""

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def asset(name: str) -> str:
    return str(Path(__file__).resolve().parents[1] / "animatezero" / "assets" / name)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset)


def controls_defaults() -> dict:
    """Every ``Controls`` field and its default, as plain config values (tuples become lists)."""
    from dataclasses import fields

    from animatezero.controls import Controls  # imports nothing heavy

    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in fields(Controls)}


ConfigStore.instance().store(group="schema", name="controls", node=controls_defaults())
