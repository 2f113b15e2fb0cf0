"""compress's accuracy limit: the fine-tune stops at the target, gradual cuts, and --priority when the budget
cannot be met within --max-drop (tiny model, digits, a MACs budget so that no latency search runs)."""

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from cli_helpers import run_cli, run_cli_code, tiny_model_file
from slimkit.compress.gradual import stage_count
from slimkit.compress.limit import AccuracyLimit
from slimkit.engine import TrainData


def test_stage_count_from_the_size_of_the_cut():
    assert stage_count(0.6, 0.5) == 1
    assert stage_count(0.5, 0.5) == 1
    assert stage_count(0.3, 0.5) == 2  # log 0.3 / log 0.5 = 1.74
    assert stage_count(0.24, 0.5) == 2  # 2.06: a tenth of a stage of slack
    assert stage_count(0.2, 0.5) == 3  # 2.32
    assert stage_count(0.3, 0.7) == 4  # 3.38: gentler stages for accuracy-first


def test_limit_shares_between_the_cuts_and_int8():
    limit = AccuracyLimit(1.0, "budget", has_quantize=True)
    assert limit.cut_drop == 0.5 and limit.finetune_target(80.0) == 79.5
    assert limit.cut_ok(80.0, 79.5) and not limit.cut_ok(80.0, 79.4)
    # the cuts spent 0.2 of 1.0: int8 may spend the 0.8 left, whatever the priority
    assert limit.int8_allowance(80.0, 79.8, None) == pytest.approx(0.8)
    # the cuts spent 1.5: budget keeps int8's share (0.5), accuracy leaves int8 nothing
    assert limit.int8_allowance(80.0, 78.5, None) == pytest.approx(0.5)
    assert AccuracyLimit(1.0, "accuracy", True).int8_allowance(80.0, 78.5, None) == 0.0
    assert AccuracyLimit(1.0, "accuracy", True).int8_allowance(80.0, 80.0, 0.3) == 0.3  # the step's own cap
    assert AccuracyLimit(None).int8_allowance(80.0, 70.0, 2.0) == 2.0
    assert AccuracyLimit(1.0, "budget", has_quantize=False).cut_drop == 1.0


def test_finetune_stops_when_the_accuracy_is_back(monkeypatch):
    from slimkit.compress.recover import recover_

    curve = iter([0.40, 0.50, 0.595, 0.70])  # the target is 60 - 1 = 59 points: reached at epoch 3
    monkeypatch.setattr(importlib.import_module("slimkit.engine.fit"), "evaluate",
                        lambda *a, **k: {"top1": next(curve), "top5": 1.0, "loss": 0.0, "confusion_matrix": []})
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    ds = torch.utils.data.TensorDataset(x, y)
    ctx = SimpleNamespace(original=None, data=TrainData(ds, ds), seed=0, info=None,
                          limit=AccuracyLimit(1.0, "budget", has_quantize=False), baseline_top1=lambda: 60.0)
    record = recover_(ctx, nn.Linear(8, 3), {"epochs": 10, "lr": 0.01, "batch_size": 16})
    assert (record["epochs"], record["stopped"], record["target"]) == (3, "target", 59.0)
    assert record["accuracy"] == pytest.approx(59.5)


DATA_ARGS = ["--data", "digits", "--train-samples", "384", "--val-samples", "96"]
# The fine-tune's lr is tiny, so a deep cut cannot be recovered: the budget costs more than any limit > 0 allows.
RECIPE = """version: 1
name: limit
max_drop: 0.5
steps:
  - {type: train, params: {epochs: 4, lr: 0.01, patience: 2}}
  - {type: prune, params: {criterion: l2, round_to: 1, max_stage_cut: 0.5}}
  - {type: finetune, params: {epochs: 1, lr: 0.000001, distill: false}}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limit")
    (tmp / "limit.yaml").write_text(RECIPE)
    return tmp, tiny_model_file(tmp), tmp / "limit.yaml"


def _run(monkeypatch, files, name: str, *extra) -> dict:
    tmp, model, recipe = files
    out = tmp / name
    code = run_cli_code(monkeypatch, "compress", model, "--recipe", recipe, *DATA_ARGS, "--budget", "macs=0.1",
                        "--out", out, *extra)
    assert code == 0
    return json.loads((out / "report.json").read_text())


def _step(out: Path, name: str) -> dict:
    return json.loads((out / "steps" / name / "step.json").read_text())["details"]


def test_priority_accuracy_stays_within_the_limit(monkeypatch, files):
    report = _run(monkeypatch, files, "accuracy", "--priority", "accuracy")
    limit = report["accuracy_limit"]
    assert limit["priority"] == "accuracy" and limit["max_drop"] == 0.5
    prune = _step(files[0] / "accuracy", "01-prune")
    first = prune["cuts"][0]
    assert first["name"] == "cut-1" and prune["baseline_top1"] - first["accuracy"] > 0.5  # cut-1 went too far
    assert "allowed to the cuts" in prune["stopped"] and prune["cuts"][-1]["name"] == "cut-1-milder"
    # only cuts within the limit may be kept; the final model is no deeper than the one kept
    for cut in prune["cuts"]:
        assert not cut["kept"] or prune["baseline_top1"] - cut["accuracy"] <= 0.5
    assert report["budget_met"] is False and "NOT met" in limit["verdict"]
    assert report["final"]["macs"] > 0.1 * report["baseline"]["macs"]
    kinds = [p["kind"] for p in report["curve"]]
    assert kinds[0] == "baseline" and kinds[-1] == "final" and kinds.count("cut") == len(prune["cuts"])


def test_priority_budget_meets_it_and_reports_the_drop(monkeypatch, files):
    report = _run(monkeypatch, files, "budget", "--priority", "budget")
    assert report["budget_met"] is True and report["final"]["macs"] <= 0.1 * report["baseline"]["macs"]
    limit = report["accuracy_limit"]
    assert limit["within_limit"] is False and limit["drop"] == pytest.approx(report["accuracy_drop"])
    assert "more than max_drop 0.5" in limit["verdict"]
    prune = _step(files[0] / "budget", "01-prune")
    assert [c["name"] for c in prune["cuts"]] == ["cut-1", "cut-2", "cut-3", "cut-4"][: prune["stages"]]
    assert prune["kept"] == prune["cuts"][-1]["name"]
    assert "accuracy-latency curve" in (files[0] / "budget" / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--priority", "fast"], "priority"),
    (["--max-drop", "-1"], "max-drop"),
    (["--max-drop", "abc"], "max-drop"),
])
def test_bad_limit_values_exit_2_and_write_nothing(monkeypatch, capsys, tmp_path, args, message):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "compress", tiny_model_file(tmp_path), *DATA_ARGS,
                                   "--out", out, *args)
    assert code == 2 and message in (stdout + stderr) and not out.exists()
    assert "Traceback" not in stdout + stderr
