"""Hydra configs of animatezero (a package so that ``pkg://configs`` finds them in an installed copy).

``${asset:NAME}`` resolves to a file shipped inside the ``animatezero`` package (``animatezero/assets/NAME``), so a
config can name the toy-world weights wherever the package is installed. Registered on import of this package and of
``experiments``.
"""

from pathlib import Path

from omegaconf import OmegaConf


def asset(name: str) -> str:
    return str(Path(__file__).resolve().parents[1] / "animatezero" / "assets" / name)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset)
