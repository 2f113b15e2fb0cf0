"""`slimkit quantize` end to end on a digits CNN trained inside the test (a user model file the CLI imports)."""

import json

import pytest
from safetensors.torch import save_model

from cli_helpers import run_cli_code
from quant_helpers import trained, one_thread  # noqa: F401  (autouse)

FACTORY = '''
import torch.nn as nn
from safetensors.torch import load_model

def digits_model():
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    load_model(model, WEIGHTS)
    return model

digits_model.input_size = (1, 16, 16)
'''


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    save_model(trained("plain"), str(d / "w.safetensors"))
    (d / "digits_model.py").write_text(FACTORY.replace("WEIGHTS", repr(str(d / "w.safetensors"))))
    return f"{d / 'digits_model.py'}:digits_model"


def test_cli_quantize_writes_models_and_report(tmp_path, monkeypatch, capsys, model_file):
    out = tmp_path / "q"
    code = run_cli_code(monkeypatch, "quantize", model_file, "--calib-data", "digits", "--calib-samples", 64,
                   "--max-drop", 1.0, "--latency-reps", 10, "--mean", 0.5, "--std", 0.5, "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "model.int8.onnx", "model.onnx", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["latency_ms"]) == {"fp32", "int8", "speedup"}
    assert report["latency"]["int8"]["repetitions"] >= 10 and report["latency"]["conditions"]["threads"] == 1
    acc = report["accuracy"]
    assert acc["fp32"] > 85.0  # normalised as in training: the model's accuracy is real
    assert acc["val_samples"] == 359 and acc["drop"] == pytest.approx(acc["fp32"] - acc["int8"]) and acc["drop"] <= 1.0
    assert report["size_bytes"]["int8"] < report["size_bytes"]["fp32"]
    assert isinstance(report["float_nodes"], dict)
    # the verdict follows from the two medians measured in this run: faster from a 3% gain, slower below 1x
    speedup = report["latency_ms"]["fp32"] / report["latency_ms"]["int8"]
    assert report["speed_guard"]["speedup"] == pytest.approx(speedup)
    assert report["speed_guard"]["verdict"] == ("faster" if speedup >= 1.03 else "slower" if speedup < 1 else "no_gain")
    assert report["slower_than_fp32"] == (report["latency_ms"]["int8"] > report["latency_ms"]["fp32"])
    assert report["data"] == {"source": "digits", "calib_samples": 64, "val_samples": 359, "labelled": True}
    args = json.loads((out / "args.json").read_text())
    assert args["command"] == "quantize" and args["args"]["config"]["calib_samples"] == 64
    assert "latency (ORT" in printed and "accuracy (top-1" in printed
    # the weight format of this machine's int8 path, and ORT's int8 ops exact against int32 arithmetic
    from slimkit.compress.quantize.int8_format import choose_format
    from slimkit.utils.cpu import int8_path

    assert report["int8_format"]["weights"] == choose_format().weights and report["settings"]["weights"] == choose_format().weights
    assert report["int8_check"]["passed"] and report["int8_check"]["ops_checked"] >= 1
    assert report["environment"]["int8_path"] == int8_path() and "int8 weights:" in printed
    if report["slower_than_fp32"]:
        assert "SLOWER" in printed


def test_cli_quantize_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, model_file):
    out = tmp_path / "q"
    assert run_cli_code(monkeypatch, "quantize", "not_a_model_xyz", "--out", out) == 2
    assert capsys.readouterr().err.startswith("error: unknown model")
    assert run_cli_code(monkeypatch, "quantize", model_file, "--method", "magic", "--out", out) == 2
    assert "invalid quantize option" in capsys.readouterr().err
    assert run_cli_code(monkeypatch, "quantize", model_file, "--calib-data", "nope", "--out", out) == 2
    assert "unknown data source" in capsys.readouterr().err
    assert run_cli_code(monkeypatch, "quantize", model_file, "--target-cpu", "pentium", "--out", out) == 2
    assert "invalid quantize option" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("kind: qat\nepochs: -1\n")  # qat and codebook configs are accepted when valid
    assert run_cli_code(monkeypatch, "quantize", model_file, "--config", tmp_path / "cfg.yaml", "--out", out) == 2
    assert "invalid qat config" in capsys.readouterr().err
    assert not out.exists() and not any(p.name.startswith(".q.") for p in tmp_path.iterdir())
