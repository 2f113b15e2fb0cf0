"""`slimkit prune` end to end: model directory + report.json that reload exactly; bad input -> exit 2."""

import json
import sys
from pathlib import Path

import pytest
import torch

from slimkit.cli.main import main
from slimkit.compress.prune.measure import count_macs
from slimkit.compress.prune.unstructured import sparsity_of
from slimkit.models import load_model_dir

DEMO = str(Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.py") + ":digits_cnn"


def _run(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["slimkit", *args])
    try:
        main()
    except SystemExit as exc:
        return exc.code
    return 0


def test_prune_cli_writes_reloadable_dir_and_report(monkeypatch, tmp_path):
    out = tmp_path / "pruned"
    code = _run(monkeypatch, "prune", DEMO, "--target", "macs=0.5", "--data", "digits", "--epochs", "0.1",
                "--kd", "--input-size", "3x32x32", "--train-samples", "256", "--val-samples", "128", "--out", str(out))
    assert code == 0
    assert {"architecture.json", "model.safetensors", "report.json", "args.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        assert set(report[side]) == {"macs", "params", "latency_ms", "accuracy"}
        assert report[side]["latency_ms"] > 0 and 0.0 <= report[side]["accuracy"] <= 1.0
    assert abs(report["after"]["macs"] / report["before"]["macs"] - 0.5) <= 0.05
    assert report["achieved"] == pytest.approx(report["after"]["macs"] / report["before"]["macs"])
    model, info = load_model_dir(out, trust_code=True)
    x = torch.randn(1, 3, 32, 32)
    assert count_macs(model, x) == report["after"]["macs"]  # the reloaded shapes are the pruned ones
    assert model[0][0].out_channels == report["kept"]["0.0"]["after"] < report["kept"]["0.0"]["before"]
    assert info.input_size == (3, 32, 32)
    args = json.loads((out / "args.json").read_text())
    assert args["command"] == "prune" and args["args"]["target"] == "macs=0.5"


def test_prune_cli_unstructured_reports_size_not_speed(monkeypatch, tmp_path):
    out = tmp_path / "sparse"
    code = _run(monkeypatch, "prune", DEMO, "--unstructured", "0.8", "--input-size", "3x32x32", "--no-latency",
                "--out", str(out))
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    un = report["unstructured"]
    # The mask removes round(0.8 * n) weights of n: within one weight of 80%.
    assert un["sparsity"] == pytest.approx(0.8, abs=1e-4) and "no speed-up" in un["note"]
    assert un["file_bytes"]["sparse"]["gzip"] < 0.5 * un["file_bytes"]["dense"]["gzip"]
    assert report["after"]["macs"] == report["before"]["macs"]  # dense MACs do not move
    model, _ = load_model_dir(out, trust_code=True)
    assert sparsity_of(model) == pytest.approx(un["sparsity"])  # masks folded in


@pytest.mark.parametrize("extra,message", [
    (["--target", "macs:0.5"], "malformed target"),
    (["--target", "flops=0.5"], "unknown target kind"),
    (["--target", "macs=1.5"], "strictly between 0 and 1"),
    (["--criterion", "magic"], "unknown criterion"),
    (["--criterion", "taylor"], "needs --data"),
    (["--target", "macs=0.001"], "out of reach"),
    (["--epochs", "1"], "needs --data"),
    (["--ratio", "0.3", "--target", "macs=0.5"], "not both"),
    (["--ratio", "1.2"], "ratio must be in"),
])
def test_prune_cli_bad_input_exit_2_nothing_written(monkeypatch, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    code = _run(monkeypatch, "prune", DEMO, "--input-size", "3x32x32", "--no-latency", "--out", str(out), *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_prune_cli_config_file_and_prune_again(monkeypatch, tmp_path):
    cfg = tmp_path / "prune.json"
    cfg.write_text(json.dumps({"target": "params=0.6", "criterion": "l1", "allocation": "adaptive"}))
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(monkeypatch, "prune", DEMO, "--config", str(cfg), "--input-size", "3x32x32", "--no-latency",
                "--out", str(first)) == 0
    report = json.loads((first / "report.json").read_text())
    assert (report["config"]["criterion"], report["config"]["allocation"]) == ("l1", "adaptive")
    assert abs(report["after"]["params"] / report["before"]["params"] - 0.6) <= 0.06
    # a directory built from user code is only re-imported with --trust-code
    assert _run(monkeypatch, "prune", str(first), "--target", "macs=0.7", "--no-latency", "--out", str(second)) == 2
    assert _run(monkeypatch, "prune", str(first), "--trust-code", "--target", "macs=0.7", "--no-latency",
                "--out", str(second)) == 0
    again = json.loads((second / "report.json").read_text())
    assert again["before"]["macs"] == report["after"]["macs"]
