"""`slimkit export --to ...` and `slimkit profile --runtime ...` end to end, and the compress `deploy` step.

The slow ones run under `make test-deploy` / `make test-all` (LiteRT conversions start a converter process).
"""

import inspect
import json
import sys

import pytest
from safetensors.torch import save_model

from quant_helpers import one_thread, trained  # noqa: F401  (autouse)
from slimkit.deploy.multi import runtime_unavailable_reason

from cli_helpers import run_cli_code as run_cli  # noqa: E402
from test_quant_cli import FACTORY as DIGITS_FACTORY  # noqa: E402  (the same trained digits model file)

from test_deploy_runtimes import Cummax  # noqa: E402

# the digits model, plus a model no runtime can lower (aten::cummax), both in one user file
FACTORY = (DIGITS_FACTORY + "\nimport torch\n\n" + inspect.getsource(Cummax)
           + "\n\ndef cummax_model():\n    return Cummax()\n\ncummax_model.input_size = (1, 16, 16)\n")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    save_model(trained("plain"), str(d / "w.safetensors"))
    (d / "digits_model.py").write_text(FACTORY.replace("WEIGHTS", repr(str(d / "w.safetensors"))))
    return d / "digits_model.py"


def test_export_to_runtimes_with_int8(tmp_path, monkeypatch, capsys, model_file):
    if runtime_unavailable_reason("openvino"):
        pytest.skip(runtime_unavailable_reason("openvino"))
    spec = f"{model_file}:digits_model"
    q = tmp_path / "q"
    assert run_cli(monkeypatch, "quantize", spec, "--calib-samples", 32, "--val-samples", 100, "--no-max-drop",
                   "--no-speed-guard", "--latency-reps", 10, "--out", q) == 0
    capsys.readouterr()
    out = tmp_path / "deploy"
    code = run_cli(monkeypatch, "export", spec, "--to", "onnx,openvino", "--int8", q, "--repetitions", 5, "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads((out / "deploy.json").read_text())
    assert set(data["artifacts"]) == {"onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:int8"}
    assert data["int8"]["calib_images"] == 32 and data["int8"]["qdq_onnx"] == str(q / "model.int8.onnx")
    assert data["artifacts"]["openvino:int8"]["accuracy"]["images"] == 100
    # the int8 ONNX is the quantize output as produced, byte for byte
    assert (out / "model.int8.onnx").read_bytes() == (q / "model.int8.onnx").read_bytes()
    assert json.loads((out / "args.json").read_text())["args"]["to"] == "onnx,openvino"
    assert "fastest:" in printed and "openvino" in printed


def test_export_bad_inputs_one_line_exit_2(tmp_path, monkeypatch, capsys, model_file):
    spec = f"{model_file}:digits_model"
    assert run_cli(monkeypatch, "export", spec, "--to", "onnx,coreml", "--out", tmp_path / "a") == 2
    assert capsys.readouterr().err.strip() == ("error: unknown runtime 'coreml'; choose from executorch, onnx, openvino, "
                                               "tflite (or all)")
    assert run_cli(monkeypatch, "export", spec, "--format", "onnx", "--int8", tmp_path, "--out", tmp_path / "m.onnx") == 2
    assert "--int8 needs --to" in capsys.readouterr().err
    if runtime_unavailable_reason("executorch") is None:
        code = run_cli(monkeypatch, "export", f"{model_file}:cummax_model", "--to", "executorch", "--no-latency",
                       "--out", tmp_path / "c")
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("error: executorch: cannot convert the model: unsupported op aten.cummax"), err
    assert not any(p.name in ("a", "c") for p in tmp_path.iterdir())


def test_format_alias_still_writes_one_file(tmp_path, monkeypatch, capsys, model_file):
    if runtime_unavailable_reason("openvino"):
        pytest.skip(runtime_unavailable_reason("openvino"))
    spec = f"{model_file}:digits_model"
    assert run_cli(monkeypatch, "export", spec, "--format", "onnx", "--out", tmp_path / "m.onnx") == 0
    assert run_cli(monkeypatch, "export", spec, "--format", "openvino", "--out", tmp_path / "m.xml") == 0
    printed = capsys.readouterr().out
    assert "check passed in openvino" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.onnx", "m.report.json", "m.xml"]


@pytest.mark.slow
def test_profile_runtime_all_names_the_fastest(tmp_path, monkeypatch, capsys, model_file):
    code = run_cli(monkeypatch, "profile", f"{model_file}:digits_model", "--runtime", "all", "--threads", "1",
                   "--repetitions", 5, "--layers", -1, "--json", tmp_path / "p.json")
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads((tmp_path / "p.json").read_text())
    timed = set(data["latency_ms"]) | set(data["latency_errors"])
    assert timed == {"torch", "onnxruntime", "openvino", "tflite", "executorch"}  # timed, or said why not
    for runtime, why in data["latency_errors"].items():
        assert runtime_unavailable_reason(runtime), f"{runtime} failed although installed: {why}"
    fastest = min(data["latency_ms"], key=lambda r: data["latency_ms"][r]["median"])
    assert "fastest runtime" in printed and fastest in printed
    assert run_cli(monkeypatch, "profile", f"{model_file}:digits_model", "--runtime", "tflite", "--batch", 2) == 2


DEPLOY_RECIPE = """
version: 1
name: ship
budget: size=0.5
steps:
  - {type: train, params: {epochs: 1, lr: 0.01}}
  - {type: quantize, params: {max_drop: null, calib_samples: 32, speed_guard: false}}
  - {type: deploy, params: {to: [openvino], repetitions: 5}}
"""


@pytest.mark.slow
def test_compress_deploy_step(tmp_path):
    if runtime_unavailable_reason("openvino"):
        pytest.skip(runtime_unavailable_reason("openvino"))
    import os
    import subprocess

    (tmp_path / "tiny.py").write_text("import torch.nn as nn\n\ndef tiny(num_classes=10):\n    return nn.Sequential("
                                      "nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), "
                                      "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))\n\n"
                                      "tiny.input_size = (3, 16, 16)\n")
    (tmp_path / "ship.yaml").write_text(DEPLOY_RECIPE)
    res = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "compress", f"{tmp_path / 'tiny.py'}:tiny",
                          "--recipe", tmp_path / "ship.yaml", "--data", "digits", "--train-samples", "128",
                          "--val-samples", "64", "--out", tmp_path / "run"], capture_output=True, text=True,
                         env=dict(os.environ, COLUMNS="200"), timeout=900)
    assert res.returncode == 0, res.stderr + res.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    deploy = report["steps"][-1]["details"]["deploy"]
    assert set(deploy["artifacts"]) == {"onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:int8"}
    assert deploy["int8"]["calib_images"] == 32 and deploy["latency"]["threads"] == 1
    assert all(a["check"]["passed"] for a in deploy["artifacts"].values())
    step_files = {p.name for p in (tmp_path / "run" / "steps" / "02-deploy" / "onnx").iterdir()}
    assert {"model.int8.xml", "model.int8.bin", "model.int8.onnx", "deploy.json"} <= step_files
