"""Aggregation over videos (docs/metrics.md §2): macro average of per-video values plus a 95% bootstrap CI."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (non-finite values dropped). One value gives (v, v);
    none gives (nan, nan). Deterministic for a given ``seed``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(values: Sequence[float], **bootstrap_kwargs) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high", "n"}`` over the finite values (the table shows the mean)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    lo, hi = bootstrap_ci(finite, **bootstrap_kwargs)
    return {"mean": float(np.mean(finite)) if finite else math.nan, "ci_low": lo, "ci_high": hi, "n": len(finite)}


def summarize_rows(
    rows: Iterable[Mapping[str, object]], metric_keys: Sequence[str], group_by: Sequence[str] = ()
) -> dict[str, dict[str, dict[str, float]]]:
    """Per group (the ``group_by`` column values joined as ``k=v,...``; ``"all"`` without grouping), a
    :func:`summarize` of each metric column. Values that are not numbers are ignored."""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        name = ",".join(f"{k}={row.get(k)}" for k in group_by) if group_by else "all"
        bucket = groups.setdefault(name, {k: [] for k in metric_keys})
        for k in metric_keys:
            v = row.get(k)
            if isinstance(v, bool):
                v = float(v)
            if isinstance(v, int | float):
                bucket[k].append(float(v))
    return {name: {k: summarize(v) for k, v in cols.items() if v} for name, cols in groups.items()}
