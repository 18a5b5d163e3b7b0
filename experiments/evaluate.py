"""Metrics for a run directory or a sweep (a thin Hydra entry to ``evaluation.evaluate``).

    python -m experiments.evaluate run_dir=outputs/sweeps/t2v_table
    python -m experiments.evaluate run_dir=outputs/generate/2026-11-22/10-00-00-000000 metrics=first_frame
    python -m experiments.evaluate run_dir=outputs/sweeps/toyworld_ablation metrics=toyworld  # no weights needed

Writes metrics.json per run; for a sweep also metrics.csv and metrics_summary.json (mean and 95% CI per
configuration). Then ``python scripts/make_tables.py <sweep_dir>`` renders the paper's tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from experiments import cli


def evaluate(cfg: DictConfig, networks: Any = None) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir``; ``networks`` injects evaluator networks (tests use toy ones). Returns the run's
    metrics, or the sweep's summary groups. W&B is opened only once the metrics exist: a failed evaluation leaves
    no W&B run behind."""
    cli.check_values(cfg)  # wandb.mode, run_dir not empty
    path = Path(cfg.run_dir)
    if not path.is_dir():
        raise cli.ConfigError(f"run_dir={cfg.run_dir} is not a directory; give a run or a sweep directory")
    from evaluation.evaluate import EvalConfig, evaluate_run, evaluate_sweep
    from evaluation.runs import find_runs
    from experiments import common
    from experiments.runs import WandbRun, check_writable

    config = EvalConfig(**common.plain(cfg.eval))
    # every folder this evaluation will write into, proved writable before anything is computed
    if (path / "run.json").is_file():
        check_writable([path] if cfg.force or not (path / "metrics.json").is_file() else [], "metrics.json")
    else:
        check_writable([path], "metrics.csv and metrics_summary.json")
        check_writable(find_runs(path), "metrics.json")
    if (path / "run.json").is_file():
        if (path / "metrics.json").is_file() and not cfg.force:
            result = json.loads((path / "metrics.json").read_text())
            print(f"[evaluate] {path / 'metrics.json'} exists (force=true recomputes)")
        else:
            result = evaluate_run(path, common.plain(cfg.metrics), networks, config)
        out = result["metrics"]
        summary = out
    else:
        rows = evaluate_sweep(
            path, common.plain(cfg.metrics), networks, config, force=cfg.force, group_by=list(cfg.group_by)
        )
        out = json.loads((path / "metrics_summary.json").read_text())["groups"]
        summary = {f"{group}/{metric}": s["mean"] for group, metrics in out.items() for metric, s in metrics.items()}
        print(f"[evaluate] {len(rows)} runs -> {path / 'metrics.csv'}")
    wandb = WandbRun.start(
        **{**common.wandb_args(cfg.wandb), "group": cfg.wandb.group or path.name},
        name=f"evaluate-{path.name}",
        job_type="evaluate",
        config=common.plain(cfg),
        dir=path,
    )
    wandb.summary(summary)
    wandb.finish()
    print(json.dumps(out, indent=2))
    return out


@hydra.main(config_path="pkg://configs", config_name="evaluate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    cli.run("python -m experiments.evaluate", evaluate, cfg)  # bad input, evaluator offline: one line, exit 2


def main() -> None:
    """``python -m experiments.evaluate KEY=VALUE ...``: an unknown key is one line and exit 2; then Hydra runs."""
    cli.check_override_keys("python -m experiments.evaluate", sys.argv[1:], "evaluate")
    _hydra_main()


if __name__ == "__main__":
    main()
