"""No silent fallback: where slimkit cannot do what was asked, the result says so and the log warns.

Each case forces the failure (a criterion that gives no or NaN scores, a model torch.fx
cannot trace, ONNX shape inference that fails, an ONNX Runtime that cannot run a model
under an absolute latency budget, a prune target past the pruner's range) and checks
both the recorded note and the WARNING record.
"""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from slimkit.compress.prune import PruneConfig, prune_, register_criterion
from slimkit.errors import SlimkitError


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


class _FirstGroup(tp.importance.Importance):
    """L1 scores, except for the group rooted at the first conv, which gets `first(n)`."""

    def __init__(self, model, first):
        self.model, self.first = model, first
        self.l1 = tp.importance.GroupMagnitudeImportance(p=1)

    def __call__(self, group):
        if group[0].dep.target.module is self.model[0]:
            return self.first(len(group[0].idxs))
        return self.l1(group)


@register_criterion("test_none_for_first")
def _none_for_first(model, calib, seed):
    return _FirstGroup(model, lambda n: None)


@register_criterion("test_nan_for_first")
def _nan_for_first(model, calib, seed):
    return _FirstGroup(model, lambda n: torch.tensor([float("nan")] * (n // 2) + [0.1 * (i + 1) for i in range(n // 2)]))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_criterion_without_scores_is_reported(caplog):
    model = small_net()
    with caplog.at_level(logging.WARNING):
        result = prune_(model, PruneConfig(target=None, ratio=0.5, criterion="test_none_for_first", round_to=1,
                                           allocation="uniform"), torch.randn(1, 3, 8, 8))
    assert any(n.startswith("0: the criterion gave no scores") for n in result.notes)
    assert any("gave no scores" in w for w in _warnings(caplog))
    assert model[0].out_channels == 8 and model[3].out_channels == 4  # only the scored group was pruned


def test_nan_scores_are_reported_and_never_ranked_least_important(caplog):
    model = small_net()
    before = model[0].weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        result = prune_(model, PruneConfig(target=None, ratio=0.5, criterion="test_nan_for_first", round_to=1,
                                           allocation="uniform"), torch.randn(1, 3, 8, 8))
    assert any("4 of 8 scores are NaN" in n for n in result.notes)
    assert any("NaN" in w for w in _warnings(caplog))
    kept = [i for i in range(8) if any(torch.equal(row, before[i]) for row in model[0].weight.detach())]
    assert len(kept) == 4 and len([i for i in kept if i < 4]) >= 3  # NaN-scored channels 0..3 mostly survive


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if y.mean() > 1e9:  # data-dependent control flow: torch.fx cannot trace it
            y = y * 0
        return self.b(y).mean((2, 3))


def test_equalization_that_cannot_run_says_so(caplog, tmp_path):
    from slimkit.compress.quantize.calib import QuantData
    from slimkit.compress.quantize.config import PTQConfig
    from slimkit.compress.quantize.equalize import equalize_
    from slimkit.compress.quantize.pipeline import quantize_ptq

    with caplog.at_level(logging.WARNING):
        report = equalize_(Untraceable())
    assert not report.applied and "torch.fx cannot trace Untraceable" in report.error and not report.pairs
    assert any("equalization not applied" in w for w in _warnings(caplog))
    rng = np.random.default_rng(0)
    data = QuantData("random", rng.standard_normal((8, 3, 8, 8)).astype(np.float32),
                     rng.standard_normal((8, 3, 8, 8)).astype(np.float32), None)
    config = PTQConfig(equalize="on", bias_correction="off", speed_guard=False, max_drop=None)
    result = quantize_ptq(Untraceable().eval(), (3, 8, 8), data, config, tmp_path / "q")
    assert result["preprocess"]["equalize"]["applied"] is False
    assert "cannot trace" in result["preprocess"]["equalize"]["error"]


def test_failed_onnx_shape_inference_is_reported(caplog, tmp_path, monkeypatch):
    import onnx

    from slimkit.compress.quantize.graph import OnnxGraph
    from slimkit.deploy.onnx_export import export_onnx

    export_onnx(small_net(), (3, 8, 8), tmp_path / "m.onnx")

    def broken(model, *args, **kwargs):
        raise RuntimeError("inference exploded")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    with caplog.at_level(logging.WARNING):
        graph = OnnxGraph(tmp_path / "m.onnx")
    assert "inference exploded" in graph.shape_error
    assert any("shape inference failed" in w for w in _warnings(caplog))
    first = graph.layers()[0]
    assert first.macs == int(np.prod(first.weight_shape))  # weight size, as the note says


def _context(budget, has_quantize=False):
    from slimkit.compress.budget import parse_budget
    from slimkit.compress.steps import RunContext

    return RunContext(Path("unused"), None, "digits", (3, 8, 8), parse_budget(budget), None, 1, 0, True,
                      has_quantize, original=small_net().eval())


def test_absolute_latency_budget_uses_onnxruntime_or_fails(monkeypatch):
    import slimkit.profile.latency as latency
    from slimkit.compress.steps import _latency_fraction
    from slimkit.profile.timing import Timing

    def timing(ms):
        return Timing(ms, ms, ms, ms, 0.0, 30)

    monkeypatch.setattr(latency, "measure_latency",
                        lambda *a, **k: ({"torch": timing(1.0), "onnxruntime": timing(4.0)}, {}))
    assert _latency_fraction(_context("latency=2ms")) == pytest.approx(0.5)  # 2 ms of ORT's 4, not torch's 1
    monkeypatch.setattr(latency, "measure_latency",
                        lambda *a, **k: ({"torch": timing(1.0)}, {"onnxruntime": "RuntimeError: no kernel"}))
    with pytest.raises(SlimkitError, match="ONNX Runtime cannot run the model.*no kernel"):
        _latency_fraction(_context("latency=2ms"))


def test_a_clamped_prune_target_is_recorded(caplog, monkeypatch):
    from types import SimpleNamespace

    import slimkit.compress.int8_gain as int8_gain
    from slimkit.compress.steps import _prune_target

    # the original's measured files: fp32 1000 bytes, int8 300 bytes for 200 params (100 bytes besides weights)
    monkeypatch.setattr(int8_gain, "measure_int8_size", lambda *a: {"fp32_bytes": 1000, "int8_bytes": 300, "params": 200})

    def context(budget):
        ctx = _context(budget, has_quantize=True)
        ctx.data = SimpleNamespace(train=SimpleNamespace(tensors=lambda: (torch.zeros(32, 3, 8, 8), None)))
        return ctx

    with caplog.at_level(logging.WARNING):
        target, how = _prune_target(context("size=0.5"), {})
    assert target == "params=0.95"
    assert how["clamped"]["wanted"] == pytest.approx((0.5 * 0.95 * 1000 - 100) / 200) and how["clamped"]["used"] == 0.95
    assert any("clamped to 0.95" in w for w in _warnings(caplog))
    target, how = _prune_target(context("size=0.2"), {})
    assert target == "params=0.45" and "clamped" not in how  # (0.2 * 0.95 * 1000 - 100) / 200
