"""`slimkit search` from the command line: one-line errors with exit 2, loud table warnings, train -> run -> model dir."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli

from test_search import fake_table


def test_unknown_space_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    for args in (("latency-table", "nope", "--out", tmp_path / "t.json"),
                 ("train", "nope", "--out", tmp_path / "run")):
        code, _, err = run_cli(monkeypatch, capsys, "search", *args)
        assert code == 2 and err.strip().count("\n") == 0 and "unknown search space 'nope'" in err
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "run").exists()


def test_table_from_another_machine_warns_loudly(monkeypatch, capsys, tmp_path):
    from slimkit.search.space import load_space

    table = fake_table(load_space("tiny"))
    table.conditions = {**table.conditions, "cpu": "Elsewhere 9000", "threads": 32}
    table.save(tmp_path / "t.json")
    code, out, err = run_cli(monkeypatch, capsys, "search", "predict", tmp_path / "t.json", "--threads", "1")
    assert code == 0 and "WARNING" in err and "Elsewhere 9000" in err and "threads" in err
    assert f"{table.predict_ms(table.space.largest()):.4f} ms" in out


def train_small(monkeypatch, capsys, space: str, run):
    """`search train SPACE` for one epoch on 64 digits images; returns the run directory."""
    code, _, err = run_cli(monkeypatch, capsys, "search", "train", space, "--data", "digits", "--epochs", "1",
                           "--train-samples", "64", "--val-samples", "32", "--batch-size", "32", "--out", run,
                           "--threads", "1")
    assert code == 0, err
    return run


def test_train_then_search_writes_a_loadable_child(monkeypatch, capsys, tmp_path):
    from slimkit.models import load_model
    from slimkit.search.space import load_space

    run = train_small(monkeypatch, capsys, "tiny", tmp_path / "run")
    table = fake_table(load_space("tiny"))
    table.conditions["threads"] = 1
    table.save(run / "latency_table.json")
    code, _, err = run_cli(monkeypatch, capsys, "search", "run", run, "--latency", "0.00001ms")
    assert code == 2 and "no child reaches" in err
    code, _, err = run_cli(monkeypatch, capsys, "search", "run", run, "--latency", "fast")
    assert code == 2 and "cannot read latency" in err
    target = table.predict_ms(table.space.largest())
    code, out, err = run_cli(monkeypatch, capsys, "search", "run", run, "--latency", f"{target}ms", "--population", "4",
                             "--generations", "1", "--confirm", "1")
    assert code == 0, err
    result = json.loads((run / "search" / "search.json").read_text())
    winner = result["winners"][0]
    assert winner["predicted_ms"] == table.predict_ms(table.space.validate_arch(
        type(table.space.largest()).model_validate(winner["arch"])))
    assert winner["measured_ms"] > 0 and result["condition_mismatches"] == []
    model, info = load_model(str(run / "search" / "child_0"))
    res = winner["arch"]["resolution"]
    assert info.input_size == (1, res, res) and model(torch.randn(1, 1, res, res)).shape == (1, 10)


@pytest.mark.slow
def test_latency_table_measures_every_part(monkeypatch, capsys, tmp_path):
    from slimkit.search.latency import space_parts
    from slimkit.search.space import load_space
    from slimkit.search.table import LatencyTable

    code, out, err = run_cli(monkeypatch, capsys, "search", "latency-table", "tiny", "--threads", "1", "--out",
                             tmp_path / "t.json", "--repetitions", "5", "--rounds", "1", "--calibrate", "3", "--validate", "3")
    assert code == 0, err
    table = LatencyTable.load(tmp_path / "t.json")
    assert set(table.entries) == set(space_parts(load_space("tiny")))
    assert all(e["median_ms"] > 0 and e["repetitions"] >= 5 for e in table.entries.values())
    assert table.conditions["threads"] == 1 and table.conditions["runtime"] == "onnxruntime"
    assert table.calibration["fitted_on"] == 3 and table.check_conditions(1) == []
    assert table.calibration["validation"]["n"] == 3 and "validation on 3 children" in out
