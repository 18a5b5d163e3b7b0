"""CLIP cosine metrics (docs/metrics.md §3.1, §3.2, §3.5): Text-Sim, Domain-Sim and frame consistency.

Values are raw cosines in [-1, 1] (never clamped, never x100; x100 is a rendering choice). Each metric has a
``*_per_frame`` / ``*_per_pair`` form on embeddings, so a caller that needs both frame-0 variants encodes once,
and a convenience form on frames that takes the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.protocols import ImageTextEncoder
from evaluation.video import as_video, frames_from


@torch.no_grad()
def encode_images(encoder: ImageTextEncoder, images: Tensor) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> L2-normalised float32 ``[N, D]``."""
    return F.normalize(encoder.encode_image(images).float(), dim=-1)


@torch.no_grad()
def encode_texts(encoder: ImageTextEncoder, texts: Sequence[str]) -> Tensor:
    """N prompts -> L2-normalised float32 ``[N, D]``."""
    return F.normalize(encoder.encode_text(list(texts)).float(), dim=-1)


def text_sim_per_frame(frame_emb: Tensor, text_emb: Tensor) -> Tensor:
    """cos(E_T(p), E_I(x_f)) for each frame: ``[F, D]``, ``[1, D]`` (normalised) -> ``[F]``."""
    return frame_emb @ text_emb.reshape(-1)


def domain_sim_per_frame(frame_emb: Tensor, ref_emb: Tensor) -> Tensor:
    """(1/K) sum_k cos(E_I(x_f), E_I(r_k)) for each frame: ``[F, D]``, ``[K, D]`` -> ``[F]``."""
    return (frame_emb @ ref_emb.T).mean(dim=1)


def consecutive_cosine_per_pair(frame_emb: Tensor) -> Tensor:
    """cos(E_I(x_f), E_I(x_{f+1})) for f = 0..F-2: ``[F, D]`` -> ``[F-1]``."""
    return (frame_emb[:-1] * frame_emb[1:]).sum(dim=-1)


def all_pairs_cosine(frame_emb: Tensor) -> float:
    """Mean off-diagonal cosine over the F(F-1) ordered pairs (Tune-A-Video / LOVEU ``clip_score_frame``)."""
    n = frame_emb.shape[0]
    if n < 2:
        return float("nan")
    sim = frame_emb @ frame_emb.T
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def text_sim(frames: Tensor, prompt: str, encoder: ImageTextEncoder, *, include_first_frame: bool = True) -> float:
    """Text-Sim(v) = (1/F) sum_f cos(E_T(p), E_I(x_f)) over ``frames`` (or ``frames[1:]``)."""
    frames = frames_from(as_video(frames), include_first_frame)
    values = text_sim_per_frame(encode_images(encoder, frames), encode_texts(encoder, [prompt]))
    return float(values.mean())


def domain_sim(
    frames: Tensor, references: Tensor, encoder: ImageTextEncoder, *, include_first_frame: bool = True
) -> float:
    """Domain-Sim(v) = (1/(F K)) sum_f sum_k cos(E_I(x_f), E_I(r_k)); ``references`` is ``[K, 3, H, W]``."""
    frames = frames_from(as_video(frames), include_first_frame)
    ref_emb = encode_images(encoder, as_video(references))
    return float(domain_sim_per_frame(encode_images(encoder, frames), ref_emb).mean())


def frame_consistency(
    frames: Tensor,
    encoder: ImageTextEncoder,
    *,
    mode: str = "consecutive",
    include_first_frame: bool = True,
) -> float:
    """CLIP temporal consistency: ``mode="consecutive"`` (mean over F-1 neighbour pairs; FateZero, EvalCrafter
    CLIP-Temp) or ``"all_pairs"`` (mean off-diagonal; LOVEU). NaN for fewer than two frames."""
    frames = frames_from(as_video(frames), include_first_frame)
    emb = encode_images(encoder, frames)
    if mode == "all_pairs":
        return all_pairs_cosine(emb)
    if mode != "consecutive":
        raise ValueError(f"mode must be 'consecutive' or 'all_pairs', got {mode!r}")
    pairs = consecutive_cosine_per_pair(emb)
    return float(pairs.mean()) if pairs.numel() else float("nan")
