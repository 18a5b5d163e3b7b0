"""``evaluation.tables`` (``scripts/make_tables.py``) on sweep folders with damaged files: a run.json or metrics.json
that is not a JSON object (a list, a string, null) or is cut short is left out with one warning line naming the file,
and the tables are made from the other runs."""

from __future__ import annotations

import csv
import json

import pytest

from evaluation import tables


def write_run(folder, run, metrics=None) -> None:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(run if isinstance(run, str) else json.dumps(run))
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))


def good(sweep, name: str, text_sim: float) -> None:
    run = {"status": "done", "configuration": "paper", "prompt": "a cat", "controls": {"share_kv": True}}
    write_run(sweep / "paper" / name, run, {"metrics": {"text_sim": text_sim}, "meta": {"networks": {}}})


BAD_RUN_JSON = {
    "list": "[1, 2, 3]",
    "truncated": '{"status": "done", "configuration": "pa',
    "string": '"done"',
    "null": "null",
    "not_utf8": b"\xff\xfe{}".decode("latin-1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_RUN_JSON))
def test_a_damaged_run_json_is_left_out_with_one_warning(tmp_path, capsys, kind):
    sweep = tmp_path / "sweep"
    good(sweep, "a_s0", 0.25)
    good(sweep, "b_s0", 0.75)
    bad = sweep / "paper" / "c_s0"
    bad.mkdir(parents=True)
    if kind == "not_utf8":
        (bad / "run.json").write_bytes(b"\xff\xfe{}")
    else:
        (bad / "run.json").write_text(BAD_RUN_JSON[kind])
    (bad / "metrics.json").write_text(json.dumps({"metrics": {"text_sim": 100.0}}))  # would show in the mean

    assert tables.main([str(sweep), "--out", str(tmp_path / "tables")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and str(bad / "run.json") in warnings[0]
    with open(tmp_path / "tables" / "t2v_table.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["configuration"] == "paper" and row["n"] == "2" and float(row["text_sim_mean"]) == 0.5


@pytest.mark.parametrize("metrics", ["[1, 2, 3]", '{"metrics": {"text_sim": 0.', '{"metrics": [1], "meta": "x"}'])
def test_a_damaged_metrics_json_is_left_out_or_read_as_empty(tmp_path, capsys, metrics):
    """A metrics.json that is not an object (or is cut short) leaves its run out with a warning naming it; an object
    whose fields have the wrong types gives the run no metrics (so it counts in no metric's mean) without a crash."""
    sweep = tmp_path / "sweep"
    good(sweep, "a_s0", 0.25)
    good(sweep, "b_s0", 0.75)
    write_run(sweep / "paper" / "c_s0", {"status": "done", "configuration": "paper"}, metrics)

    runs = tables.collect([sweep])
    err = capsys.readouterr().err
    names = sorted(r.run_dir.name for r in runs)
    if metrics.startswith("{\"metrics\": ["):
        assert names == ["a_s0", "b_s0", "c_s0"] and runs[2].metrics == {} and err == ""
    else:
        assert names == ["a_s0", "b_s0"]
        assert err.count("\n") == 1 and str(sweep / "paper" / "c_s0" / "metrics.json") in err
    assert tables.main([str(sweep), "--out", str(tmp_path / "tables")]) == 0
    with open(tmp_path / "tables" / "t2v_table.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert float(row["text_sim_mean"]) == 0.5


def test_wrongly_typed_fields_of_a_run_json_do_not_crash_the_tables(tmp_path):
    """A run.json object with a list for ``configuration``, a number for ``prompt`` and a string for ``controls``
    (hand-edited) still makes a row: the label is the text of the value and the controls fall back to defaults."""
    sweep = tmp_path / "sweep"
    run = {"status": "done", "configuration": ["x"], "prompt": 5, "controls": "paper"}
    write_run(sweep / "odd" / "a_s0", run, {"metrics": {"text_sim": 0.5, "toyworld_motion_acc": 1.0}})
    assert tables.main([str(sweep), "--out", str(tmp_path / "tables")]) == 0
    assert "| ['x'] | 1 | 0.5000 |" in (tmp_path / "tables" / "t2v_table.md").read_text()


def test_only_damaged_runs_is_the_usual_error(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep / "paper" / "a_s0", "[1, 2, 3]")
    assert tables.main([str(sweep), "--out", str(tmp_path / "tables")]) == 2
    err = capsys.readouterr().err
    assert "a_s0" in err and "error: no finished runs" in err
    assert not (tmp_path / "tables").exists()
