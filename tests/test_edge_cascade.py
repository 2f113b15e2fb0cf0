"""Confidence cascades: the threshold choice on constructed confidences, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run_cli
from slimkit.deploy.edge.cascade import choose_threshold, confidence

CONF = np.array([0.9, 0.8, 0.7, 0.6])
SMALL_OK = np.array([1, 1, 0, 0], bool)
BIG_OK = np.array([1, 1, 1, 0], bool)  # BIG alone: 75 %


def test_threshold_by_hand():
    # keep 2 (threshold 0.8): small right on both, BIG right on 1 of the other 2 -> 75 %, 1 + 0.5 * 10 = 6 ms
    c = choose_threshold(CONF, SMALL_OK, BIG_OK, small_ms=1.0, big_ms=10.0, max_drop=0.5)
    assert (c.threshold, c.accuracy, c.fraction_sent, c.mean_latency_ms) == (0.8, 75.0, 0.5, 6.0)
    # a 30-point allowance keeps everything on SMALL: 50 % >= 45 %, 1 ms
    c = choose_threshold(CONF, SMALL_OK, BIG_OK, 1.0, 10.0, max_drop=30)
    assert (c.threshold, c.accuracy, c.fraction_sent, c.mean_latency_ms) == (0.6, 50.0, 0.0, 1.0)
    assert [r["accuracy"] for r in c.curve] == [75.0, 75.0, 75.0, 50.0, 50.0]


def test_ties_and_send_all():
    # equal confidences cannot be split: the choice is all or nothing; SMALL is always wrong -> send all
    c = choose_threshold(np.array([0.5, 0.5]), np.array([0, 0], bool), np.array([1, 1], bool), 1.0, 10.0, 0.5)
    assert c.threshold == float("inf") and c.fraction_sent == 1.0 and len(c.curve) == 2


def test_confidence_kinds():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]))
    assert np.allclose(confidence(logits), [0.7, 0.4])
    assert np.allclose(confidence(logits, "margin"), [0.5, 0.0])


def test_confidence_equals_sorted_softmax_bit_for_bit():
    # the fast path (1 / sum, partition) must give exactly the textbook softmax-then-sort values
    logits = np.random.default_rng(0).normal(0, 3, (200, 10)).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = -np.sort(-p, axis=1)
    assert np.array_equal(confidence(logits), top[:, 0])
    assert np.array_equal(confidence(logits, "margin"), top[:, 0] - top[:, 1])
    assert confidence(logits).dtype == np.float32


MODELS = """
import torch.nn as nn

def small(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))

def big(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

def big7():
    return big(7)

small.input_size = big.input_size = big7.input_size = (3, 16, 16)
"""


def test_cli_cascade(tmp_path, monkeypatch, capsys):
    from slimkit.deploy.edge.cascade_build import CascadeRunner

    (tmp_path / "m.py").write_text(MODELS)
    s, b = f"{tmp_path / 'm.py'}:small", f"{tmp_path / 'm.py'}:big"
    out = tmp_path / "c"
    code, stdout, err = run_cli(monkeypatch, capsys, "deploy", "cascade", s, b, "--data", "digits", "--val-samples",
                                64, "--repetitions", 10, "--timed-images", 8, "--out", out)
    assert code == 0, err
    assert {"small.onnx", "big.onnx", "policy.json", "report.json", "report.html"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    c = report["choice"]
    assert c["accuracy"] >= c["big_accuracy"] - 0.5
    runner = CascadeRunner(out)
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    preds, sent = runner.predict(x)
    assert preds.shape == (4,) and sent.dtype == bool
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "cascade", s, f"{tmp_path / 'm.py'}:big7", "--data",
                           "digits", "--val-samples", 16, "--out", tmp_path / "bad")
    assert code == 2 and "SMALL has 10 classes but BIG has 7" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("drop", ["-1"])
def test_cli_cascade_bad_drop(tmp_path, monkeypatch, capsys, drop):
    (tmp_path / "m.py").write_text(MODELS)
    s = f"{tmp_path / 'm.py'}:small"
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "cascade", s, s, "--max-drop", drop, "--val-samples", 8,
                           "--out", tmp_path / "bad")
    assert code == 2 and "--max-drop" in err
