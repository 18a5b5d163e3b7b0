"""``experiments.evaluate`` on a sweep it cannot write into refuses before computing anything (it used to compute every
metric, then crash on the first write)."""

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import evaluation.evaluate
from experiments import evaluate as ev
from experiments import runs
from experiments.runs import OutputDirError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def read_only(monkeypatch, *folders):
    """Make ``folders`` read-only. Root writes through permission bits, so for root the kernel's answer for anyone
    else (what a read-only mount gives root too) is what ``os.access`` reports."""
    for folder in folders:
        folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        locked = {str(f) for f in folders}
        monkeypatch.setattr(runs.os, "access", lambda p, mode: False if str(p) in locked else real(p, mode))


@pytest.mark.parametrize("which", ["root", "run"])
def test_read_only_sweep_is_refused_before_any_metric(tmp_path, monkeypatch, which):
    root = tmp_path / "sweep"
    for name in ("paper/cat_s1", "paper/waves_s2"):
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text(json.dumps({"status": "done", "configuration": "paper"}))
    computed = []
    monkeypatch.setattr(evaluation.evaluate, "evaluate_run", lambda *a, **k: computed.append(a) or {"metrics": {}})
    try:
        read_only(monkeypatch, root if which == "root" else root / "paper/waves_s2")
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("evaluate", overrides=[f"run_dir={root}", "wandb.mode=disabled", "metrics=first_frame"])
        with pytest.raises(OutputDirError, match="read-only") as error:
            ev.evaluate(cfg)
        assert ("metrics.csv" if which == "root" else "waves_s2") in str(error.value)
        assert computed == []
    finally:
        for folder in (root, root / "paper/waves_s2"):
            folder.chmod(0o755)


def test_empty_run_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.json").write_text("{}")  # an empty run_dir= used to mean the current folder
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("evaluate", overrides=["run_dir=", "wandb.mode=disabled"])
    with pytest.raises(ValueError, match="run_dir= is empty"):
        ev.evaluate(cfg)
