"""Early stopping on constructed val curves: when it stops, which epoch it keeps, and the not-converged verdict."""

import importlib
import logging

import pytest
import torch
import torch.nn as nn

from slimkit.engine import Hook, TrainConfig, TrainData, fit
from slimkit.engine.early_stop import EarlyStop
from slimkit.errors import BadInputError


def test_patience_stops_after_n_epochs_without_gain_and_keeps_the_best():
    stop = EarlyStop(patience=2)
    for acc in (0.50, 0.60, 0.58, 0.59):
        stop.update(acc)
    # epoch 2 is best; epochs 3 and 4 do not beat it -> two epochs without a gain = patience
    assert stop.should_stop and stop.reason == "patience" and stop.best_epoch == 2 and stop.best == 0.60
    verdict = stop.verdict("cap")
    assert verdict.reason == "patience" and verdict.converged is True and verdict.warning(10) is None


def test_min_delta_ignores_tiny_gains():
    stop = EarlyStop(patience=2, min_delta=0.02)
    for acc in (0.50, 0.51, 0.515):  # +0.01 and +0.015 are below min_delta
        stop.update(acc)
    assert stop.should_stop and stop.best_epoch == 1


def test_target_stops_at_the_first_epoch_reaching_it():
    stop = EarlyStop(target=0.7)
    for acc in (0.5, 0.69):
        stop.update(acc)
        assert not stop.should_stop
    stop.update(0.71)
    assert stop.should_stop and stop.reason == "target" and stop.best_epoch == 3


def test_cap_on_a_rising_curve_is_not_converged_with_one_line():
    stop = EarlyStop.replay([0.650, 0.696, 0.752], patience=3)
    verdict = stop.verdict("cap")
    assert verdict.converged is False and verdict.best_epoch == 3
    line = verdict.warning(3)
    assert "\n" not in line and "not converged" in line and "3-epoch cap" in line and "75.20%" in line
    # a flat end (the last epoch is not the best) counts as converged; one epoch says nothing
    assert EarlyStop.replay([0.6, 0.7, 0.69]).verdict("cap").converged is True
    assert EarlyStop.replay([0.6]).verdict("cap").converged is None


def test_config_validates_the_new_keys():
    with pytest.raises(BadInputError, match="patience"):
        TrainConfig(patience=0)
    with pytest.raises(BadInputError, match="target_accuracy"):
        TrainConfig(target_accuracy=1.5)
    assert TrainConfig.from_dict(TrainConfig(patience=2, keep_best=True).to_dict()).patience == 2


class _Snapshots(Hook):
    """The model's weights at the end of every epoch (what keep_best must restore)."""

    def __init__(self):
        self.weights = []

    def on_epoch_end(self, state):
        self.weights.append({k: v.clone() for k, v in state.model.state_dict().items()})


def _inject(monkeypatch, curve):
    """fit's evaluate returns the constructed curve, one value per call."""
    values = iter(curve)
    monkeypatch.setattr(importlib.import_module("slimkit.engine.fit"), "evaluate",
                        lambda *a, **k: {"top1": next(values), "top5": 1.0, "loss": 0.0, "confusion_matrix": []})


def _tiny():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    return nn.Linear(8, 3), TrainData(torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x, y))


def test_fit_stops_on_patience_and_restores_the_best_epoch(monkeypatch):
    _inject(monkeypatch, [0.40, 0.55, 0.52, 0.53, 0.99])
    model, data = _tiny()
    snaps = _Snapshots()
    result = fit(model, data, TrainConfig(epochs=10, batch_size=16, patience=2, keep_best=True), hooks=snaps,
                 progress=False)
    assert result.epochs_completed == 4  # stopped before the 0.99 epoch
    assert all(torch.equal(v, snaps.weights[1][k]) for k, v in model.state_dict().items())
    assert not torch.equal(model.weight, snaps.weights[3]["weight"])
    es = result.metrics["early_stopping"]
    assert (es["stopped"], es["best_epoch"], es["restored_best"], es["converged"]) == ("patience", 2, True, True)
    assert result.metrics["accuracy"] == 0.55


def test_fit_at_the_cap_on_a_rising_curve_warns(monkeypatch, caplog):
    _inject(monkeypatch, [0.650, 0.696, 0.752])
    model, data = _tiny()
    with caplog.at_level(logging.INFO, logger="slimkit.engine.fit"):
        result = fit(model, data, TrainConfig(epochs=3, batch_size=16, patience=2, keep_best=True), progress=False)
    es = result.metrics["early_stopping"]
    assert es["stopped"] == "cap" and es["converged"] is False and es["restored_best"] is False
    assert es["not_converged_warning"] in caplog.text


class _Interrupt(Hook):
    def on_epoch_begin(self, state):
        if state.epoch == 3:
            raise KeyboardInterrupt


def test_resume_rebuilds_the_stopping_state_and_the_best_weights(monkeypatch, tmp_path):
    curve = [0.40, 0.60, 0.50, 0.55, 0.58]
    cfg = TrainConfig(epochs=10, batch_size=16, patience=3, keep_best=True)
    _inject(monkeypatch, curve)
    model, data = _tiny()
    whole = fit(model, data, cfg, progress=False)
    _inject(monkeypatch, curve)
    first, data = _tiny()
    with pytest.raises(KeyboardInterrupt):
        fit(first, data, cfg, out_dir=tmp_path / "run", hooks=_Interrupt(), progress=False)
    _inject(monkeypatch, curve[3:])
    again, data = _tiny()
    resumed = fit(again, data, cfg, out_dir=tmp_path / "run", resume=True, progress=False)
    assert resumed.epochs_completed == whole.epochs_completed == 5
    assert resumed.metrics["early_stopping"]["best_epoch"] == 2
    assert all(torch.equal(v, whole.model.state_dict()[k]) for k, v in again.state_dict().items())
