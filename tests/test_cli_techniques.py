"""Every technique from the command line and from a recipe: prune --schedule lapp|precrop|iterative,
quantize --qat|--codebook, train --loss bias, and the same techniques as compress recipe steps."""

import json

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from slimkit.data import load_data
from slimkit.engine import TrainConfig, fit
from slimkit.models import load_model, load_model_dir

NET = '''
import torch.nn as nn

def net(num_classes=10, in_chans=3):
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(in_chans, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
net.input_size = (3, 16, 16)
'''
DATA = ("--data", "digits", "--train-samples", "256", "--val-samples", "128")


def run(monkeypatch, capsys, *args):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    return code, out + err


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.py"
    path.write_text(NET)
    return f"{path}:net"


@pytest.fixture(scope="module")
def trained(spec, tmp_path_factory):
    """A trained model directory (2 epochs on 512 digits)."""
    out = tmp_path_factory.mktemp("trained") / "model"
    torch.manual_seed(0)
    model, info = load_model(spec, num_classes=10)
    data = load_data("digits", (3, 16, 16), train_samples=512, val_samples=128)
    fit(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.01), out_dir=out, info=info, progress=False)
    return out


def _report(out):
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("schedule, extra", [
    ("lapp", ("--epochs", "4", "--lr", "0.05")),
    ("precrop", ()),
    ("iterative", ("--steps", "2", "--epochs", "1", "--kd")),
])
def test_prune_schedules_from_the_cli(monkeypatch, capsys, tmp_path, spec, schedule, extra):
    out = tmp_path / schedule
    code, text = run(monkeypatch, capsys, "prune", spec, "--schedule", schedule, "--target", "macs=0.5",
                     "--round-to", "1", *DATA, *extra, "--no-latency", "--out", out)
    assert code == 0, text
    report = _report(out)
    ratio = report["after"]["macs"] / report["before"]["macs"]
    assert report["schedule"] == schedule and report["achieved"] == pytest.approx(ratio)
    # LAPP cuts where its learned masks fall below 0.5, so it lands near the target, not on it.
    assert ratio < 0.7 if schedule == "lapp" else abs(ratio - 0.5) <= 0.05
    if schedule == "iterative":
        assert [s["step"] for s in report["stages"]] == [1, 2] and report["finetune"]["kd"]
    if schedule == "lapp":
        assert report["stages"][0]["macs_ratio"] == pytest.approx(ratio)
    model, _ = load_model_dir(out, trust_code=True)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("extra, message", [
    (("--schedule", "lapp", "--target", "params=0.5", "--epochs", "1"), "MACs target"),
    (("--schedule", "iterative"), "give epochs > 0"),
    (("--schedule", "precrop", "--target", "latency=0.5"), "not latency"),
    (("--schedule", "warp"), "schedule must be one of"),
])
def test_bad_schedules_exit_2(monkeypatch, capsys, tmp_path, spec, extra, message):
    code, text = run(monkeypatch, capsys, "prune", spec, *DATA, *extra, "--out", tmp_path / "x")
    assert code == 2 and message in text and text.count("\n") == 1 and not (tmp_path / "x").exists()


def test_quantize_qat_from_the_cli(monkeypatch, capsys, tmp_path, trained):
    from slimkit.compress.quantize.ort_eval import predict

    out = tmp_path / "qat"
    code, text = run(monkeypatch, capsys, "quantize", trained, "--qat", "--epochs", "1", "--distill-alpha", "0.5",
                     "--trust-code", "--calib-data", "digits", "--train-samples", "256", "--val-samples", "128",
                     "--target-cpu", "x86-avx2", "--out", out)
    assert code == 0, text
    report = _report(out)
    # built for x86 without VNNI: 7-bit weights, which are exact on any CPU
    assert report["int8_format"]["weights"] == "s7" and report["config"]["target_cpu"] == "x86-avx2"
    assert report["export"]["int8_check"]["passed"] and report["export"]["int8_check"]["ops_checked"] >= 1
    acc = report["accuracy"]
    assert report["kind"] == "qat" and report["export"]["check"]["passed"] and report["config"]["distill_alpha"] == 0.5
    assert abs(acc["int8_onnxruntime"] - acc["quantized"]) <= 1.0  # ORT runs the fake-quant model's arithmetic
    assert acc["fp32"] - acc["int8_onnxruntime"] <= 5.0
    x = load_data("digits", (3, 16, 16), val_samples=8).val.tensors()[0].numpy()
    assert np.isfinite(predict(out / "model.int8.onnx", x)).all()


def test_quantize_codebook_from_the_cli(monkeypatch, capsys, tmp_path, trained, spec):
    from slimkit.compress.quantize.codebook import load_codebook_

    out = tmp_path / "cb"
    code, text = run(monkeypatch, capsys, "quantize", trained, "--codebook", "--bits", "2", "--calib-data", "digits",
                     "--val-samples", "128", "--trust-code", "--out", out)
    assert code == 0, text
    report = _report(out)
    assert report["kind"] == "codebook" and report["bits"] == 2
    assert report["size_bytes"]["codebook"] < report["size_bytes"]["fp32_safetensors"] / 6
    decoded = load_codebook_(load_model(spec, num_classes=10)[0], out / "model.codebook.safetensors")
    for name in report["layers"]:
        assert len(torch.unique(decoded.get_submodule(name).weight)) <= 4  # one 2-bit codebook per layer
    code, text = run(monkeypatch, capsys, "quantize", trained, "--codebook", "--distill-alpha", "1", "--out", out)
    assert code == 2 and "--distill-alpha does not apply to --codebook" in text


def test_train_with_the_bias_loss(monkeypatch, capsys, tmp_path, spec):
    losses = {}
    for loss in ("ce", "bias"):
        out = tmp_path / loss
        code, text = run(monkeypatch, capsys, "train", spec, *DATA, "--epochs", "1", "--batch-size", "32",
                         "--loss", loss, "--trust-code", "--out", out)
        assert code == 0, text
        metrics = json.loads((out / "metrics.json").read_text())
        losses[loss] = metrics["train_loss"]
    assert metrics["loss"] == {"name": "bias", "layer": "9"}  # the last spatial feature map: the last ReLU
    # Bias Loss weights are exp(0.3 v) - 0.3 in [0.7, 1.05]: the first-epoch loss sits well below plain CE's.
    assert 0.6 * losses["ce"] < losses["bias"] < 0.95 * losses["ce"]
    code, text = run(monkeypatch, capsys, "train", spec, *DATA, "--loss", "bias", "--loss-layer", "nope",
                     "--trust-code", "--out", tmp_path / "bad")
    assert code == 2 and "no layer named 'nope'" in text


RECIPE = """
version: 1
name: precrop-qat
steps:
  - {type: prune, params: {schedule: precrop, round_to: 1}}
  - {type: quantize, params: {kind: qat, epochs: 1}}
"""
RECIPE_SLOW = """
version: 1
name: bias-lapp-iterative-codebook
steps:
  - {type: train, params: {epochs: 1, lr: 0.01, loss: bias}}
  - {type: prune, params: {schedule: lapp, epochs: 4, lr: 0.05, round_to: 1, target: macs=0.8}}
  - {type: prune, name: stages, params: {schedule: iterative, steps: 2, epochs: 1, round_to: 1}}
  - {type: quantize, params: {kind: codebook, bits: 4, min_params: 200}}
"""


def _compress(monkeypatch, capsys, tmp_path, spec, recipe):
    (tmp_path / "recipe.yaml").write_text(recipe)
    out = tmp_path / "run"
    code, text = run(monkeypatch, capsys, "compress", spec, "--recipe", tmp_path / "recipe.yaml", "--budget",
                     "macs=0.6", "--data", "digits", "--train-samples", "256", "--val-samples", "128", "--out", out)
    assert code == 0, text
    report = _report(out)
    assert report["budget_met"] and report["final"]["macs"] <= 0.6 * report["baseline"]["macs"]
    return out, report, [s["details"] for s in report["steps"]]


def test_precrop_and_qat_run_as_recipe_steps(monkeypatch, capsys, tmp_path, spec):
    out, report, details = _compress(monkeypatch, capsys, tmp_path, spec, RECIPE)
    assert details[0]["prune"]["schedule"] == "precrop" and details[1]["quantize"]["kind"] == "qat"
    assert report["final"]["onnx"].endswith("model.int8.onnx")  # the QAT export is the deployable file
    again = run(monkeypatch, capsys, "compress", spec, "--recipe", tmp_path / "recipe.yaml", "--budget", "macs=0.6",
                "--data", "digits", "--train-samples", "256", "--val-samples", "128", "--out", out, "--resume")
    assert again[0] == 0 and _report(out)["final"]["macs"] == report["final"]["macs"]  # fake-quant steps reload


@pytest.mark.slow
def test_bias_lapp_iterative_and_codebook_run_as_recipe_steps(monkeypatch, capsys, tmp_path, spec):
    out, report, details = _compress(monkeypatch, capsys, tmp_path, spec, RECIPE_SLOW)
    assert [d["prune"]["schedule"] for d in details[:2]] == ["lapp", "iterative"]
    assert json.loads((out / "steps" / "00-train" / "step.json").read_text())["details"]["loss"] == "bias"
    sizes = details[2]["quantize"]["size_bytes"]
    assert sizes["codebook"] < sizes["fp32_safetensors"] / 1.5  # small pruned layers: headers and norms weigh in
