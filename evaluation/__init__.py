"""Metrics for generated videos, on tensors and files only (definitions: docs/metrics.md).

Importing this package loads only torch and numpy; evaluator networks are built on first use by
``evaluation.extractors``. ``evaluation.evaluate`` reads run directories and writes ``metrics.json`` / ``metrics.csv``.
"""

from evaluation.clip_scores import domain_sim, frame_consistency, text_sim
from evaluation.fidelity import PSNR_CAP_DB, first_frame_fidelity, psnr, ssim
from evaluation.flow import dynamic_degree, motion_amount, warping_error
from evaluation.stats import bootstrap_ci, summarize
from evaluation.style import style_dist
from evaluation.video import as_image, as_video

__all__ = [
    "PSNR_CAP_DB",
    "as_image",
    "as_video",
    "bootstrap_ci",
    "domain_sim",
    "dynamic_degree",
    "first_frame_fidelity",
    "frame_consistency",
    "motion_amount",
    "psnr",
    "ssim",
    "style_dist",
    "summarize",
    "text_sim",
    "warping_error",
]
