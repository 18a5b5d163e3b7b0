"""Regenerate the paper's tables from evaluated sweep directories, as Markdown and CSV, plus frame strips.

    python scripts/make_tables.py outputs/sweeps/t2v_table outputs/sweeps/ablation_fig6 [--out tables]
    python -m evaluation.tables outputs/sweeps/t2v_table [--out tables]          # the same

Reads every run below the given sweep directories (run.json for the configuration, metrics.json written by
``experiments/evaluate.py`` / ``evaluation.evaluate``; a sweep-level metrics.csv is used for runs without one) and
writes into ``--out`` (default: ``<first sweep>/tables``):

* ``t2v_table.{md,csv}``            Text-Sim, Domain-Sim, Style-Dist, warping error per configuration (paper Table 1)
* ``ablation_table.{md,csv}``       the controls of each configuration and its metrics (Fig. 6 rows, window size,
                                    K/V injection steps, position correction)
* ``first_frame_fidelity.{md,csv}`` PSNR / SSIM / LPIPS of frame 0 against the step-1 image
* ``toyworld_table.{md,csv}``       toy-world ground-truth metrics (``experiment=toyworld_ablation``, evaluated with
                                    ``metrics=toyworld``): prompt / motion accuracy, consistency with frame 0, ...
* ``toyworld_breakdown.{md,csv}``   the same runs by motion group (moving / growing / shrinking) and by the
                                    attribute kept (color, shape)
* ``frame_strips_<sweep>.png``      frames 1, 6, 11, 16 of one prompt for every configuration (like Fig. 6)

Cells are the mean over videos (prompt/seed pairs) and its 95% percentile-bootstrap CI, ``0.81 [0.72, 0.89]``
(``evaluation.stats.summarize``: 10,000 resamples of the videos, seed 0, so tables are reproducible); the CSV has
``<metric>_mean``, ``_ci_low``, ``_ci_high``; ``n`` is the number of videos.

A run whose run.json or metrics.json cannot be read as a JSON object (truncated by a full disk, edited by hand, a
list) is left out with one warning line on stderr naming the file; the tables are made from the others.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from animatezero.controls import Controls  # imports nothing heavy: the defaults of fields older runs lack
from evaluation.runs import find_runs, run_status
from evaluation.stats import summarize

# (metric key, column title); arrows say which direction is better.
T2V_COLUMNS = [
    ("text_sim", "Text-Sim ↑"),
    ("domain_sim", "Domain-Sim ↑"),
    ("style_dist", "Style-Dist ↓"),
    ("warping_error", "Warping error ↓"),
]
ABLATION_COLUMNS = [
    ("text_sim", "Text-Sim ↑"),
    ("domain_sim", "Domain-Sim ↑"),
    ("warping_error", "Warping error ↓"),
    ("frame_consistency", "Frame consistency ↑"),
    ("motion", "Motion (px)"),
    ("first_frame_psnr", "Frame-0 PSNR ↑"),
]
FIDELITY_COLUMNS = [
    ("first_frame_psnr", "PSNR (dB) ↑"),
    ("first_frame_ssim", "SSIM ↑"),
    ("first_frame_lpips", "LPIPS ↓"),
    ("domain_sim_wo_f0", "Domain-Sim, frames 2+ ↑"),
]
CONTROL_COLUMNS = [
    ("insert_latent", "Latent insert"),
    ("share_kv", "K/V share"),
    ("window_attention", "Window attn"),
    ("position_correction", "Pos. correction"),
    ("window_size", "Window size"),
    ("kv_steps", "K/V steps"),
]
TOYWORLD_COLUMNS = [
    ("toyworld_color_acc", "T2I color ↑"),
    ("toyworld_shape_acc", "T2I shape ↑"),
    ("toyworld_motion_acc", "Motion acc ↑"),
    ("toyworld_consistency", "Consistent w/ frame 0 ↑"),
    ("toyworld_size_change", "Size change ↓"),
    ("toyworld_track_jerk", "Track jerk (px) ↓"),
    ("toyworld_frame0_jerk", "Jerk at frame 0 (px) ↓"),
    ("toyworld_frame0_psnr", "Frame-0 PSNR ↑"),
]
TOYWORLD_CONTROL_COLUMNS = [
    *CONTROL_COLUMNS,
    ("insert_steps", "Insert steps"),
    ("kv_mode", "K/V mode"),
    ("kv_levels", "K/V levels"),
    ("kv_source", "K/V source"),
    ("noise_share", "Noise shared"),
]
# the toy-world table broken down: motion accuracy by the caption's motion group, consistency by attribute
TOYWORLD_MOTION_GROUPS = ("moving", "growing", "shrinking")
TOYWORLD_BREAKDOWN_COLUMNS = [
    *((f"toyworld_motion_acc_{g}", f"Motion acc: {g} ↑") for g in TOYWORLD_MOTION_GROUPS),
    ("toyworld_color_consistency", "Color kept ↑"),
    ("toyworld_shape_consistency", "Shape kept ↑"),
    ("toyworld_consistency", "Both kept ↑"),
    *((f"toyworld_motion_size_ratio_{g}", f"End/start size: {g}") for g in TOYWORLD_MOTION_GROUPS[1:]),
]
STRIP_FRAMES = (0, 5, 10, 15)  # frames 1, 6, 11, 16 (paper Fig. 6)


@dataclass
class Run:
    sweep: str
    label: str
    run_dir: Path
    run: dict
    metrics: dict[str, float] = field(default_factory=dict)
    networks: dict = field(default_factory=dict)


def natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _csv_metrics(sweep_dir: Path) -> dict[str, dict[str, float]]:
    """``run`` (relative dir) -> numeric columns of a sweep-level metrics.csv, if there is one."""
    path = sweep_dir / "metrics.csv"
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values = {}
            for k, v in row.items():
                try:
                    values[k] = float(v)
                except (TypeError, ValueError):
                    continue
            out[row.get("run", "")] = values
    return out


def read_object(path: Path) -> dict | None:
    """``path``'s JSON object, or None (after one warning line on stderr naming the file) when the file cannot be
    read, is not valid JSON or holds something other than an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        print(f"warning: {path}: unreadable ({e}); this run is left out of the tables", file=sys.stderr)
        return None
    if not isinstance(value, dict):
        kind = type(value).__name__
        print(f"warning: {path}: a JSON {kind}, not an object; this run is left out of the tables", file=sys.stderr)
        return None
    return value


def collect(sweep_dirs: Sequence[Path]) -> list[Run]:
    """The finished runs below ``sweep_dirs`` with their metrics (runs whose files are damaged are left out with a
    warning: :func:`read_object`)."""
    runs = []
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            print(f"error: {sweep_dir} is not a directory; give evaluated sweep directories", file=sys.stderr)
            raise SystemExit(2)
        from_csv = _csv_metrics(sweep_dir)
        for run_dir in find_runs(sweep_dir):  # committed runs only (no temporary folders of killed sweeps)
            run = read_object(run_dir / "run.json")
            if run is None or run_status(run) != "done":
                continue
            label = str(run.get("configuration") or run_dir.parent.name)
            item = Run(sweep_dir.name, label, run_dir, run)
            metrics_json = run_dir / "metrics.json"
            if metrics_json.is_file():
                result = read_object(metrics_json)
                if result is None:
                    continue
                metrics, meta = result.get("metrics"), result.get("meta")
                metrics = metrics if isinstance(metrics, dict) else {}
                item.metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
                networks = meta.get("networks") if isinstance(meta, dict) else None
                item.networks = networks if isinstance(networks, dict) else {}
            else:
                item.metrics = from_csv.get(run_dir.relative_to(sweep_dir).as_posix(), {})
            runs.append(item)
    # Labels that occur in several sweeps are told apart by the sweep's name.
    sweeps_of: dict[str, set[str]] = {}
    for r in runs:
        sweeps_of.setdefault(r.label, set()).add(r.sweep)
    for r in runs:
        if len(sweeps_of[r.label]) > 1:
            r.label = f"{r.sweep}/{r.label}"
    return runs


def add_motion_groups(runs: Sequence[Run]) -> dict[str, int]:
    """Give each toy-world run ``toyworld_motion_acc_<group>`` and ``toyworld_motion_size_ratio_<group>``, its motion
    accuracy and end/start size under its caption's motion group (``moving`` left/right/up/down, ``growing``,
    ``shrinking``), so a table column averages one group's videos only. Returns how many videos each group has in
    the largest configuration."""
    counts: dict[str, dict[str, int]] = {}
    for r in runs:
        found = re.search(r"\b(moving|growing|shrinking)\b", str(r.run.get("prompt", "")))
        if found is None or "toyworld_motion_acc" not in r.metrics:
            continue
        group = found.group(1)
        for key in ("toyworld_motion_acc", "toyworld_motion_size_ratio"):
            if key in r.metrics:
                r.metrics[f"{key}_{group}"] = r.metrics[key]
        per = counts.setdefault(r.label, {})
        per[group] = per.get(group, 0) + 1
    return max(counts.values(), key=lambda c: sum(c.values()), default={})


def groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return {k: out[k] for k in sorted(out, key=natural_key)}


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.2f}" if abs(x) >= 10 else f"{x:.4f}"


def _fmt_ci(summary: dict) -> str:
    """``mean [ci_low, ci_high]`` (just the mean for a single video or a missing CI)."""
    mean, lo, hi = summary["mean"], summary["ci_low"], summary["ci_high"]
    if summary.get("n", 0) < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def _control(value) -> str:
    if isinstance(value, bool):
        return "✓" if value else "–"
    if value is None:
        return "clip"
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return ",".join(map(str, value))  # a set of levels
    if isinstance(value, list):  # a step range [start, end]
        return "–".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def build_table(grouped: dict[str, list[Run]], columns, with_controls: bool = False, control_columns=None):
    """-> (markdown text, csv text), or None when no run has any of the table's metrics. Markdown cells are
    ``mean [95% CI]`` (:func:`_fmt_ci`)."""
    control_columns = control_columns or CONTROL_COLUMNS
    keys = [k for k, _ in columns]
    if not any(k in r.metrics for runs in grouped.values() for r in runs for k in keys):
        return None
    header = ["Configuration"]
    if with_controls:
        header += [title for _, title in control_columns]
    header += ["n", *[title for _, title in columns]]
    md_rows, csv_rows = [], []
    for label, runs in grouped.items():
        saved = runs[0].run.get("controls")
        controls = Controls.later_defaults() | (saved if isinstance(saved, dict) else {})  # runs saved before those
        row = [label]
        csv_row: dict = {"configuration": label}
        if with_controls:
            row += [_control(controls.get(k)) for k, _ in control_columns]
            csv_row.update({k: json.dumps(controls.get(k)) for k, _ in control_columns})
        csv_row["n"] = len(runs)
        row.append(str(len(runs)))
        for key in keys:
            s = summarize([r.metrics[key] for r in runs if key in r.metrics])
            row.append(_fmt_ci(s))
            csv_row.update({f"{key}_mean": s["mean"], f"{key}_ci_low": s["ci_low"], f"{key}_ci_high": s["ci_high"]})
        md_rows.append(row)
        csv_rows.append(csv_row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in md_rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(csv_rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    return "\n".join(lines) + "\n", buf.getvalue()


def networks_note(runs: Sequence[Run]) -> str:
    seen: dict[str, str] = {}
    for r in runs:
        for name, meta in r.networks.items():
            seen.setdefault(
                name, ", ".join(f"{k}={v}" for k, v in meta.items()) if isinstance(meta, dict) else str(meta)
            )
    if not seen:
        return ""
    return "Evaluator networks: " + "; ".join(f"{k} ({v})" for k, v in sorted(seen.items())) + "\n"


def strip_indices(num_frames: int) -> list[int]:
    if num_frames >= 16:
        return list(STRIP_FRAMES)
    count = min(4, num_frames)
    return sorted({round(i * (num_frames - 1) / max(count - 1, 1)) for i in range(count)})


def frame_strips(runs: Sequence[Run], path: Path, prompt_id: str | None = None, tile: int = 192) -> Path | None:
    """Frames 1/6/11/16 of one prompt (``prompt_id``, else the first present in every configuration), one row per
    configuration, with labels."""
    from PIL import Image, ImageDraw

    grouped = groups(runs)
    by_prompt = {label: {r.run_dir.name: r for r in rs} for label, rs in grouped.items()}
    common_items = set.intersection(*(set(d) for d in by_prompt.values())) if by_prompt else set()
    if prompt_id is not None:
        common_items = {d for d in common_items if d == prompt_id or d.startswith(f"{prompt_id}_s")}
    if not common_items:
        return None
    item = sorted(common_items, key=natural_key)[0]
    rows, columns = [], []
    for label, items in by_prompt.items():
        files = sorted((items[item].run_dir / "frames").glob("*.png"))
        if files:
            columns = columns or strip_indices(len(files))
            rows.append((label, [files[i] for i in strip_indices(len(files))]))
    if not rows:
        return None
    ncols = max(len(f) for _, f in rows)
    with Image.open(rows[0][1][0]) as first:
        scale = min(1.0, tile / max(first.size))
        w, h = max(1, round(first.width * scale)), max(1, round(first.height * scale))
    label_w, header_h, pad = 170, 22, 4
    canvas = Image.new("RGB", (label_w + ncols * (w + pad), header_h + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, i in enumerate(columns):
        draw.text((label_w + c * (w + pad) + 4, 4), f"frame {i + 1}", fill="black")
    for r, (label, files) in enumerate(rows):
        y = header_h + r * (h + pad)
        draw.text((4, y + h // 2 - 6), label[:26], fill="black")
        for c, f in enumerate(files):
            with Image.open(f) as im:
                canvas.paste(im.convert("RGB").resize((w, h)), (label_w + c * (w + pad), y))
    draw.text((4, 4), item[:26], fill="gray")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write(out: Path, stem: str, title: str, table, note: str) -> list[Path]:
    if table is None:
        print(f"[tables] {stem}: no run has these metrics yet (evaluate the sweep first); skipped")
        return []
    md, csv_text = table
    (out / f"{stem}.md").write_text(f"# {title}\n\n{md}\n{note}")
    (out / f"{stem}.csv").write_text(csv_text)
    return [out / f"{stem}.md", out / f"{stem}.csv"]


TOYWORLD_NOTE = (
    "Toy-world metrics (evaluation/toyworld_metrics.py): T2I color/shape = the step-1 image's detected class equals "
    "the caption's; motion acc = the class of the fitted object track equals the caption's motion (a static clip is "
    "wrong); consistent w/ frame 0 = fraction of frames 2-16 whose object has frame 0's color and shape; size change "
    "= mean |r_t / r_0 - 1| of the equal-area radius (moving captions only); track jerk = mean second difference "
    "of (x, y, r) in pixels; frame-0 PSNR against the step-1 image (100 = identical).\n"
)


TOYWORLD_BREAKDOWN_NOTE = (
    "The toy-world table broken down. Motion acc: <group> = motion accuracy over the videos whose caption has that "
    "motion ({counts} videos per configuration; n counts all of them); color / shape / both kept = fraction of "
    "frames 2-16 whose object has frame 0's color, shape, both; end/start size: <group> = the fitted track's "
    "end/start ratio of the equal-area radius (the world's growing objects end 1.8-2.6 times as large, its "
    "shrinking ones 0.38-0.57).\n"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="evaluated sweep directories")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first sweep>/tables)")
    parser.add_argument("--prompt-id", default=None, help="prompt id for the frame strips (default: the first)")
    args = parser.parse_args(argv)
    runs = collect(args.sweeps)
    if not runs:
        print(
            f"error: no finished runs (run.json with status done) below {[str(s) for s in args.sweeps]}",
            file=sys.stderr,
        )
        return 2
    out = args.out or args.sweeps[0] / "tables"
    out.mkdir(parents=True, exist_ok=True)
    grouped = groups(runs)
    note = (
        "Mean over videos (n per row) [95% bootstrap CI over the videos: 10,000 resamples, seed 0]. "
        f"Sweeps: {', '.join(str(s) for s in args.sweeps)}.\n" + networks_note(runs)
    )
    written = []
    written += write(
        out, "t2v_table", "Text-to-video: AnimateDiff vs AnimateZero", build_table(grouped, T2V_COLUMNS), note
    )
    written += write(
        out, "ablation_table", "Ablation", build_table(grouped, ABLATION_COLUMNS, with_controls=True), note
    )
    written += write(out, "first_frame_fidelity", "First-frame fidelity", build_table(grouped, FIDELITY_COLUMNS), note)
    toyworld = build_table(grouped, TOYWORLD_COLUMNS, with_controls=True, control_columns=TOYWORLD_CONTROL_COLUMNS)
    written += write(out, "toyworld_table", "Toy world: ground-truth metrics", toyworld, note + TOYWORLD_NOTE)
    per_group = add_motion_groups(runs)
    counts = ", ".join(f"{per_group.get(g, 0)} {g}" for g in TOYWORLD_MOTION_GROUPS)
    breakdown_note = note + TOYWORLD_BREAKDOWN_NOTE.format(counts=counts)
    breakdown = build_table(grouped, TOYWORLD_BREAKDOWN_COLUMNS)
    written += write(out, "toyworld_breakdown", "Toy world: by motion group and attribute", breakdown, breakdown_note)
    for sweep in dict.fromkeys(r.sweep for r in runs):
        png = frame_strips([r for r in runs if r.sweep == sweep], out / f"frame_strips_{sweep}.png", args.prompt_id)
        if png is not None:
            written.append(png)
    for p in written:
        print(f"[tables] {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
