"""Confidence cascades: the threshold choice on constructed confidences, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run_cli
from slimkit.deploy.edge.cascade import CascadeConfig, choose_threshold, confidence, holdout_split, score_threshold
from slimkit.errors import BadInputError

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


# seed 0 splits range(20) into these halves (pinned: the split must not change between runs or releases)
SELECT = [0, 1, 5, 7, 9, 12, 14, 15, 17, 18]
HELD = [2, 3, 4, 6, 8, 10, 11, 13, 16, 19]


def _twenty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 images: the selection half is laid out so the choice is exact, the held-out half so it overfits."""
    conf, small_ok, big_ok = np.zeros(20), np.zeros(20, bool), np.zeros(20, bool)
    conf[SELECT] = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    small_ok[SELECT] = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    big_ok[SELECT] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # BIG on the selection half: 90 %
    conf[HELD] = [0.97, 0.87, 0.77, 0.67, 0.63, 0.6, 0.55, 0.52, 0.4, 0.3]
    small_ok[HELD] = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]  # SMALL on the held-out half: 50 %
    big_ok[HELD] = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]  # BIG on the held-out half: 90 %
    return conf, small_ok, big_ok


def test_holdout_split_is_seeded_partition():
    select, held = holdout_split(20, 0.5, seed=0)
    assert select.tolist() == SELECT and held.tolist() == HELD
    again = holdout_split(20, 0.5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (select, held)))
    other = holdout_split(20, 0.5, seed=1)
    assert not np.array_equal(other[1], held) and sorted(other[0].tolist() + other[1].tolist()) == list(range(20))
    assert [len(p) for p in holdout_split(25, 0.4)] == [15, 10]  # round(25 x 0.4) held out


def test_choose_on_selection_score_on_heldout_by_hand():
    conf, small_ok, big_ok = _twenty()
    s = np.array(SELECT)
    # selection half: keeping the 7 most confident (>= 0.65) makes 1 error (BIG's on the last) -> 90 %, within
    # 0.5 of BIG's 90 %; keeping 8 makes 2 -> 80 %. 3 of 10 sent: 1 + 0.3 x 10 = 4 ms
    c = choose_threshold(conf[s], small_ok[s], big_ok[s], small_ms=1.0, big_ms=10.0, max_drop=0.5)
    assert (c.threshold, c.accuracy, c.fraction_sent, c.mean_latency_ms) == (0.65, 90.0, 0.3, 4.0)
    # held-out half at 0.65: keeps 0.97/0.87/0.77/0.67 (SMALL right on 3), sends 6 (BIG right on 5) -> 8/10
    h = np.array(HELD)
    r = score_threshold(c.threshold, conf[h], small_ok[h], big_ok[h], 1.0, 10.0)
    assert r == {"images": 10, "accuracy": 80.0, "fraction_sent": 0.6, "mean_latency_ms": 7.0, "big_accuracy": 90.0,
                 "small_accuracy": 50.0, "drop": 10.0}
    # infinite threshold: everything goes on, the cascade is BIG
    assert score_threshold(float("inf"), conf[h], small_ok[h], big_ok[h], 1.0, 10.0)["accuracy"] == 90.0


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.1, 1.5])
def test_holdout_outside_open_interval(holdout):
    with pytest.raises(BadInputError, match="--holdout must be strictly between 0 and 1"):
        CascadeConfig(holdout=holdout)


def test_holdout_too_few_images():
    with pytest.raises(BadInputError, match="leaves 9 to choose the threshold and 10 to score it"):
        holdout_split(19, 0.5)  # round(9.5) = 10 held out (half to even), 9 left to choose on
    with pytest.raises(BadInputError, match="leaves 95 to choose the threshold and 5 to score it"):
        holdout_split(100, 0.05)
    assert [len(p) for p in holdout_split(20, 0.5)] == [10, 10]


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
    c, h = report["choice"], report["heldout"]
    assert c["accuracy"] >= c["big_accuracy"] - 0.5  # on the 32 selection images, by construction
    assert (report["selection_images"], h["images"], report["config"]["holdout"]) == (32, 32, 0.5)
    # the held-out figures are those of the saved cascade run on the held-out images (default seed 0)
    from slimkit.data import load_data

    x, y = (t.numpy() for t in load_data("digits", input_size=(3, 16, 16), val_samples=64).val.tensors())
    held = holdout_split(64, 0.5, seed=0)[1]
    preds, sent = CascadeRunner(out).predict(x.astype(np.float32))
    assert h["fraction_sent"] == float(sent[held].mean())
    assert h["accuracy"] == pytest.approx(100 * float((preds[held] == y[held]).mean()))
    assert h["drop"] == pytest.approx(h["big_accuracy"] - h["accuracy"])
    assert report["measured"]["cascade_ms"]["n"] == 8 and preds.shape == (64,) and sent.dtype == bool
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "cascade", s, f"{tmp_path / 'm.py'}:big7", "--data",
                           "digits", "--val-samples", 24, "--out", tmp_path / "bad")
    assert code == 2 and "SMALL has 10 classes but BIG has 7" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args, message", [(["--max-drop", "-1"], "--max-drop must be >= 0"),
                                           (["--holdout", "1"], "--holdout must be strictly between 0 and 1"),
                                           (["--holdout", "0"], "--holdout must be strictly between 0 and 1"),
                                           (["--val-samples", "16"], "leaves 8 to choose the threshold and 8")])
def test_cli_cascade_bad_input(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "m.py").write_text(MODELS)
    s = f"{tmp_path / 'm.py'}:small"
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "cascade", s, s, *args, "--out", tmp_path / "bad")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
