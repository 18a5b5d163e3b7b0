"""AnimateZero: training-free image animation with AnimateDiff (Yu et al., arXiv 2312.03793)."""

from animatezero.controls import Controls
from animatezero.pipeline import AnimateZeroPipeline
from animatezero.results import ImageResult, VideoResult

__all__ = ["AnimateZeroPipeline", "Controls", "ImageResult", "VideoResult"]
__version__ = "0.1.0"
