"""AnimateZero: training-free image animation with AnimateDiff (Yu et al., arXiv 2312.03793).

The public names are imported on first use, so light modules (``animatezero.hub``) and the
command-line entry points (``animatezero --help``, ``--cfg job``) do not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from animatezero.controls import Controls
    from animatezero.pipeline import AnimateZeroPipeline
    from animatezero.results import ImageResult, VideoResult

__all__ = ["AnimateZeroPipeline", "Controls", "ImageResult", "VideoResult"]
__version__ = "0.1.0"

_WHERE = {
    "AnimateZeroPipeline": "animatezero.pipeline",
    "Controls": "animatezero.controls",
    "ImageResult": "animatezero.results",
    "VideoResult": "animatezero.results",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'animatezero' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
