"""Evaluate run directories written by the pipeline, one at a time or a whole sweep.

A run directory holds ``run.json`` (at least ``"prompt"``; optionally ``"reference_images"``, paths relative to
the run directory), ``image.png`` (the step-1 T2I image or the given image) and the video as ``frames/0000.png ...``
(preferred) or ``video.mp4`` / ``video.gif``. :func:`evaluate_run` writes ``metrics.json`` there;
:func:`evaluate_sweep` evaluates every run below a folder and writes ``metrics.csv`` (one row per run, with the
run's config) and ``metrics_summary.json`` (mean and 95% bootstrap CI per metric). All writes are atomic.

Metric keys (all per video; ``*_wo_f0`` is the same metric on ``frames[1:]``, docs/metrics.md §2 "Frame 0"):

=======================================  ====  ======================================================
``text_sim``                              up   CLIP cos(prompt, frame), mean over frames
``domain_sim``                            up   CLIP cos(frame, reference), mean over frames x refs
``style_dist``                            down VGG-19 Gram distance to the reference(s)
``warping_error``                         down occlusion-masked MSE after RAFT warping (Lai et al.)
``motion``, ``dynamic``                   --   mean RAFT flow magnitude (px); VBench dynamic (0/1)
``frame_consistency`` (``_all_pairs``)    up   CLIP cos between consecutive (all) frames
``first_frame_{psnr,ssim,lpips}``        --   given image vs frame 0 (PSNR capped at 100 dB)
``toyworld_*``                            --   toy-world ground truth, no weights (evaluation/toyworld_metrics.py)
=======================================  ====  ======================================================

``toyworld`` (prompt accuracy, motion accuracy, consistency with frame 0, smoothness, frame-0 PSNR) needs a prompt in
the toy world's grammar and is skipped, with the reason recorded, for any other prompt.

The command line is ``python -m experiments.evaluate run_dir=PATH`` (configs/evaluate.yaml); PATH is a run directory
(has ``run.json``) or a sweep folder.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from evaluation import extractors
from evaluation.clip_scores import (
    all_pairs_cosine,
    consecutive_cosine_per_pair,
    domain_sim_per_frame,
    encode_images,
    encode_texts,
    text_sim_per_frame,
)
from evaluation.extractors import EvaluatorUnavailable
from evaluation.fidelity import first_frame_fidelity
from evaluation.flow import (
    flow_magnitude_per_pair,
    is_dynamic,
    nan_mean,
    pair_flows,
    top_flow_magnitude_per_pair,
    warping_error_per_pair,
)
from evaluation.io import atomic_write_text, load_run_video, read_image, reference_paths
from evaluation.protocols import FeatureExtractor, FlowEstimator, ImageTextEncoder, PerceptualDistance, network_meta
from evaluation.runs import find_runs, run_status  # noqa: F401 - find_runs is part of this module's API
from evaluation.stats import summarize_rows
from evaluation.style import style_dist_per_frame
from evaluation.toyworld import parse_caption
from evaluation.toyworld_metrics import score_video

log = logging.getLogger(__name__)

ALL_METRICS = (
    "text_sim",
    "domain_sim",
    "style_dist",
    "warping_error",
    "motion",
    "frame_consistency",
    "first_frame",
    "toyworld",
)
NETWORK_OF = {
    "text_sim": "clip",
    "domain_sim": "clip",
    "frame_consistency": "clip",
    "style_dist": "style",
    "warping_error": "flow",
    "motion": "flow",
    "first_frame": "lpips",
    "toyworld": None,  # analytic: no network
}
# Raised when a metric's definition or its set of keys changes: a metrics.json written by an older version is then
# evaluated again instead of being kept (metrics absent from this table are at version 1).
METRIC_VERSIONS = {"toyworld": 2}  # 2: toyworld_frame0_jerk
STYLE_VARIANTS = {"gram_relu": ("relu", "gram"), "gram_conv": ("conv", "gram"), "meanstd": ("relu", "meanstd")}


@dataclass
class EvalConfig:
    """Every free choice in docs/metrics.md that changes a number (recorded in each ``metrics.json``)."""

    device: str = "auto"  # "auto": cuda when available
    precision: str = "fp32"  # "fp16" allowed for CLIP on GPU
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    flow_model: str = "raft_large"
    flow_weights: str = "C_T_V1"  # original raft-things port (EvalCrafter / VBench)
    flow_updates: int = 12
    flow_scale: float = 1.0  # 0.5 = EvalCrafter parity / CPU speed; flow is resized back to full resolution
    style_variant: str = "gram_relu"  # gram_relu | gram_conv | meanstd
    style_size: int | None = 256  # VGG input short side (None: native)
    allow_download: bool | None = None  # None: allowed unless HF_HUB_OFFLINE / ANIMATEZERO_EVAL_OFFLINE

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


@dataclass
class Networks:
    """Evaluator networks; any left as None is loaded (lazily, once per process) from ``extractors``."""

    clip: ImageTextEncoder | None = None
    flow: FlowEstimator | None = None
    style: FeatureExtractor | None = None
    lpips: PerceptualDistance | None = None

    def resolve(self, needed: Iterable[str], config: EvalConfig) -> Networks:
        """A copy with every network in ``needed`` ("clip", "flow", "style", "lpips") present."""
        out = replace(self)
        device = config.resolved_device()
        for name in set(needed):
            if getattr(out, name) is not None:
                continue
            if name == "clip":
                out.clip = extractors.clip_encoder(
                    config.clip_model,
                    config.clip_pretrained,
                    device=device,
                    precision=config.precision,
                    allow_download=config.allow_download,
                )
            elif name == "flow":
                out.flow = extractors.raft_flow(
                    config.flow_model,
                    config.flow_weights,
                    device=device,
                    num_flow_updates=config.flow_updates,
                    scale=config.flow_scale,
                    allow_download=config.allow_download,
                )
            elif name == "style":
                layers = STYLE_VARIANTS[config.style_variant][0]
                out.style = extractors.vgg19_style(
                    layers, size=config.style_size, device=device, allow_download=config.allow_download
                )
            elif name == "lpips":
                out.lpips = extractors.lpips_alex(device=device, allow_download=config.allow_download)
        return out


# ----------------------------------------------------------------------------------------------- files


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON), tensors -> lists, recursively."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _select(metrics: str | Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return ALL_METRICS
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m]
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {ALL_METRICS}")
    return tuple(m for m in ALL_METRICS if m in metrics)


# ----------------------------------------------------------------------------------------------- one run


def _two_variants(values: dict, per_frame: dict, key: str, items: Tensor) -> None:
    """Store the mean over all items and over items[1:] (frame 0 or pair (0, 1) dropped)."""
    items = items.detach().double().cpu()
    values[key] = nan_mean(items)
    values[f"{key}_wo_f0"] = nan_mean(items[1:])
    per_frame[key] = items.tolist()


@torch.no_grad()
def compute_metrics(
    frames: Tensor,
    *,
    prompt: str | None,
    image: Tensor | None,
    references: Tensor | None,
    networks: Networks,
    metrics: Sequence[str] = ALL_METRICS,
    style_statistic: str = "gram",
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, str]]:
    """All selected metrics of one video: ``(values, per_frame, skipped)``.

    ``per_frame`` holds the per-frame (text/domain/style) or per-pair (consistency, warping, motion) values behind
    each mean; ``skipped`` maps a metric to the reason it was not computed (missing prompt or image).
    """
    values: dict[str, float] = {}
    per_frame: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    if prompt is None and "text_sim" in metrics:
        skipped["text_sim"] = "run.json has no prompt"
    if references is None:
        skipped.update({m: "no reference image" for m in ("domain_sim", "style_dist") if m in metrics})
    if image is None and "first_frame" in metrics:
        skipped["first_frame"] = "no image.png"
    if "toyworld" in metrics and (prompt is None or parse_caption(prompt) is None):
        skipped["toyworld"] = "prompt outside the toy-world grammar"
    todo = [m for m in metrics if m not in skipped]

    if {"text_sim", "domain_sim", "frame_consistency"} & set(todo):
        frame_emb = encode_images(networks.clip, frames)  # [F, D]
        if "text_sim" in todo:
            text_emb = encode_texts(networks.clip, [prompt])
            _two_variants(values, per_frame, "text_sim", text_sim_per_frame(frame_emb, text_emb))
        if "domain_sim" in todo:
            ref_emb = encode_images(networks.clip, references)
            _two_variants(values, per_frame, "domain_sim", domain_sim_per_frame(frame_emb, ref_emb))
        if "frame_consistency" in todo:
            _two_variants(values, per_frame, "frame_consistency", consecutive_cosine_per_pair(frame_emb))
            values["frame_consistency_all_pairs"] = all_pairs_cosine(frame_emb)
            values["frame_consistency_all_pairs_wo_f0"] = all_pairs_cosine(frame_emb[1:])

    if "style_dist" in todo:
        dist = style_dist_per_frame(frames, references, networks.style, statistic=style_statistic)
        _two_variants(values, per_frame, "style_dist", dist)

    if {"warping_error", "motion"} & set(todo):
        if frames.shape[0] < 2:
            skipped.update({m: "fewer than two frames" for m in ("warping_error", "motion") if m in todo})
        else:
            forward, backward = pair_flows(frames, networks.flow)
            if "warping_error" in todo:
                _two_variants(values, per_frame, "warping_error", warping_error_per_pair(frames, forward, backward))
            if "motion" in todo:
                _two_variants(values, per_frame, "motion", flow_magnitude_per_pair(forward))
                top = top_flow_magnitude_per_pair(forward)
                values["dynamic"] = float(is_dynamic(top, frames.shape[0], *frames.shape[-2:]))
                per_frame["motion_top5pct"] = top.tolist()

    if "first_frame" in todo:
        fidelity = first_frame_fidelity(frames, image, networks.lpips)
        values.update({f"first_frame_{k}": v for k, v in fidelity.items()})
    if "toyworld" in todo:
        values.update(score_video(frames, prompt, image))  # image.png = the step-1 picture frame 0 should keep
    return values, per_frame, skipped


def evaluate_run(
    run_dir: str | os.PathLike,
    metrics: str | Sequence[str] | None = None,
    networks: Networks | None = None,
    config: EvalConfig | None = None,
    *,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate one run directory; returns (and, with ``write``, atomically writes) the ``metrics.json`` content:
    ``{"metrics": {key: float}, "per_frame": {key: [...]}, "meta": {...}}``."""
    run_dir = Path(run_dir)
    config = config or EvalConfig()
    selected = _select(metrics)
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    frames, source = load_run_video(run_dir)
    image = read_image(run_dir / "image.png") if (run_dir / "image.png").is_file() else None
    ref_paths = reference_paths(run_dir, run)
    references = torch.cat([read_image(p) for p in ref_paths]) if ref_paths else None
    prompt = run.get("prompt")

    needed = {NETWORK_OF[m] for m in selected} - {None}
    networks = networks or Networks()
    injected = sorted(n for n in needed if getattr(networks, n) is not None)
    nets = networks.resolve(needed, config)
    values, per_frame, skipped = compute_metrics(
        frames,
        prompt=prompt,
        image=image,
        references=references,
        networks=nets,
        metrics=selected,
        style_statistic=STYLE_VARIANTS[config.style_variant][1],
    )
    meta = {
        "run_dir": str(run_dir),
        "video_source": source,
        "num_frames": int(frames.shape[0]),
        "height": int(frames.shape[2]),
        "width": int(frames.shape[3]),
        "prompt": prompt,
        "reference_images": [os.path.relpath(p, run_dir) for p in ref_paths],
        "metrics_requested": list(selected),
        "metric_versions": {m: METRIC_VERSIONS.get(m, 1) for m in selected},
        "skipped": skipped,
        "networks": {name: network_meta(getattr(nets, name)) for name in sorted(needed)},
        "networks_injected": injected,  # passed in by the caller: the config's network fields do not apply
        "config": asdict(config),
        "psnr_cap_db": 100.0,
        "torch": torch.__version__,
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result = _json_safe({"metrics": values, "per_frame": per_frame, "meta": meta})
    if write:
        atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


# ----------------------------------------------------------------------------------------------- sweeps


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _parse_overrides(overrides: Any) -> dict[str, Any]:
    """Hydra override strings (``["controls=none", "+sampler.steps=25"]``) or a mapping -> flat ``{key: value}``."""
    if isinstance(overrides, Mapping):
        return _flatten(overrides)
    out = {}
    for item in overrides or []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def run_config_fields(run: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV's config columns for one run: top-level scalars of run.json, then its flattened ``"config"``,
    then its ``"overrides"`` (which win when both give a key)."""
    fields = {k: v for k, v in run.items() if isinstance(v, str | int | float | bool) or v is None}
    fields.update(_flatten(run.get("config") or {}))
    fields.update(_parse_overrides(run.get("overrides")))
    return fields


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict | tuple):
        return json.dumps(value)
    return value


def rows_to_csv(rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str]) -> str:
    """CSV text: ``run``, config columns in first-seen order, then the metric columns."""
    columns: list[str] = ["run"]
    for row in rows:
        columns += [k for k in row if k not in columns and k not in metric_keys]
    columns += [k for k in metric_keys if any(k in row for row in rows)]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return buf.getvalue()


def _is_finished(metrics_path: Path, selected: Sequence[str]) -> dict[str, Any] | None:
    """The existing ``metrics.json`` if it covers every selected metric at its current version, else None."""
    if not metrics_path.is_file():
        return None
    try:
        result = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    meta = result.get("meta", {})
    done = set(meta.get("metrics_requested", []))
    versions = meta.get("metric_versions", {})
    current = all(versions.get(m, 1) == METRIC_VERSIONS.get(m, 1) for m in selected)
    return result if set(selected) <= done and current else None


def evaluate_sweep(
    sweep_dir: str | os.PathLike,
    metrics: str | Sequence[str] | None = None,
    networks: Networks | None = None,
    config: EvalConfig | None = None,
    *,
    force: bool = False,
    group_by: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Evaluate every run below ``sweep_dir`` (skipping runs whose ``metrics.json`` already covers the selected
    metrics, unless ``force``), then write ``metrics.csv`` and ``metrics_summary.json`` in ``sweep_dir``.

    A run that fails (missing files, unreadable video) is logged and left out of the CSV; a missing evaluator
    network (:class:`EvaluatorUnavailable`) stops the sweep. Returns the CSV rows.
    """
    root = Path(sweep_dir)
    config = config or EvalConfig()
    selected = _select(metrics)
    rows, failures = [], {}
    metric_keys: list[str] = []
    not_done: dict[str, str] = {}
    for run_dir in find_runs(root):
        name = run_dir.relative_to(root).as_posix() or "."
        try:
            status = run_status(json.loads((run_dir / "run.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError) as e:
            status = f"unreadable run.json ({type(e).__name__})"
        if status != "done":  # failed, interrupted or still running: no finished video to score
            log.info("skip %s (%s)", name, status)
            not_done[name] = status
            continue
        result = None if force else _is_finished(run_dir / "metrics.json", selected)
        if result is not None:
            log.info("skip %s (metrics.json present)", name)
        else:
            log.info("evaluate %s", name)
            try:
                result = evaluate_run(run_dir, selected, networks, config)
            except EvaluatorUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - one broken run must not stop a sweep
                log.error("failed %s: %s", name, e)
                failures[name] = f"{type(e).__name__}: {e}"
                continue
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        values = result.get("metrics", {})
        metric_keys += [k for k in values if k not in metric_keys]
        fields = {k if k not in values else f"config.{k}": v for k, v in run_config_fields(run).items()}
        rows.append({"run": name, **fields, **values})

    metric_keys = sorted(metric_keys, key=_metric_order)
    atomic_write_text(root / "metrics.csv", rows_to_csv(rows, metric_keys))
    summary = {
        "num_runs": len(rows),
        "failures": failures,
        "not_done": not_done,
        "group_by": list(group_by),
        "groups": summarize_rows(rows, metric_keys, group_by),
    }
    atomic_write_text(root / "metrics_summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
    return rows


def _metric_order(key: str) -> int:
    """Column position of a metric key: by its group in ALL_METRICS (sorting is stable within a group)."""
    for i, group in enumerate(ALL_METRICS):
        if key.startswith(group) or (group == "motion" and key == "dynamic"):
            return i
    return len(ALL_METRICS)
