"""Zero-cost proxies on networks small enough to score by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from slimkit.search.proxies import PROXIES, rank_correlation, score


def _line() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 1, bias=False))
    net[0].weight.data = torch.tensor([[-1.0, 2.0]])
    return net


def test_synflow_and_params_by_hand():
    x, y = torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)
    # |w| = (1, 2), input ones: R = 3, dR/dw = (1, 1): sum |w| * grad = 3
    assert PROXIES.get("synflow")(_line(), x, y) == 3.0
    assert PROXIES.get("params")(_line(), x, y) == 2.0


def test_grad_norm_by_hand():
    net = nn.Sequential(nn.Linear(2, 2, bias=False))
    net[0].weight.data = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    # logits (1, 0): softmax (e/(e+1), 1/(e+1)); dL/dz = p - onehot(1); dL/dW = dz x^T
    p = math.e / (math.e + 1)
    dz = [p, -p]
    expected = math.sqrt(sum((d * xi) ** 2 for d in dz for xi in (1.0, 2.0)))
    assert PROXIES.get("grad_norm")(net, x, y) == pytest.approx(expected, rel=1e-6)


def test_naswot_by_hand():
    x = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    # codes (1, 0) and (1, 1): K = [[2, 1], [1, 2]], log det = log 3
    assert PROXIES.get("naswot")(nn.Sequential(nn.ReLU()), x, None) == pytest.approx(math.log(3))


def test_rank_correlation_and_fresh_models_per_proxy():
    scores = [{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 2.0}, {"a": 3.0, "b": 1.0}]
    assert rank_correlation(scores, [0.1, 0.2, 0.3]) == {"a": 1.0, "b": -1.0}
    got = score(_line, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), ["synflow", "params"])
    assert got == {"synflow": 3.0, "params": 2.0}  # synflow's in-place |w| did not leak into the next proxy
