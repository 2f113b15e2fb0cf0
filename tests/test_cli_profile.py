"""`slimkit profile` end to end: JSON keys, exit codes, one-line errors, nothing written on failure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = f"{ROOT}/examples/digits_cnn.py:digits_cnn"


def run(*args, cwd=None):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "slimkit.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_profile_json_keys_and_exact_macs(tmp_path):
    out = tmp_path / "p.json"
    res = run("profile", DEMO, "--input-size", "3x32x32", "--json", str(out), "--repetitions", "5")
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    for key in ("model", "input_size", "params", "macs", "macs_by_type", "elementwise_ops", "peak_activation_bytes",
                "size_bytes", "latency_ms", "layers", "args", "environment", "throughput"):
        assert key in data
    # digits_cnn at 32x32: per stage, 2 convs at that stage's resolution; widths 28..224.
    widths, cin, hw, expected = [28, 56, 112, 224], 3, 32, 0
    for w in widths:
        expected += hw * hw * w * 9 * (cin + w)
        cin, hw = w, hw // 2
    expected += 224 * 10
    assert data["macs"] == expected
    assert data["input_size"] == [3, 32, 32]
    assert set(data["latency_ms"]) == {"torch", "onnxruntime"}
    for runtime in ("torch", "onnxruntime"):
        assert {"median", "p90"} <= set(data["latency_ms"][runtime])
        assert data["latency_ms"][runtime]["p90"] >= data["latency_ms"][runtime]["median"] > 0
    assert data["params"] == sum(layer["params"] for layer in data["layers"])


def test_profile_no_latency_timm(tmp_path):
    res = run("profile", "timm:mobilenetv3_small_050", "--input-size", "3x64x64", "--no-latency", "--layers", "0")
    assert res.returncode == 0, res.stderr
    assert "MACs" in res.stdout and "latency" not in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "resnt18"], "unknown model 'resnt18'"),
        (["profile", "tv:resnet18", "--input-size", "3x224"], "malformed input size"),
        (["profile", "tv:resnet18", "--input-size", "0x10x10"], "out of range"),
        (["profile", "tv:alexnet", "--input-size", "3x8x8", "--no-latency"], "fails forward at input size 3x8x8"),
        (["profile", "/nonexistent/model.py:build"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "p.json"
    res = run(*args, "--json", str(out))
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_debug_shows_traceback():
    res = run("--debug", "profile", "resnt18")
    assert res.returncode != 0 and "Traceback" in res.stderr
