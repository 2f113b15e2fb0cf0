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


def _conv_bn(w: float) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(1, 2))
    net[0].weight.data.fill_(w)
    return net


def test_zen_by_hand():
    from slimkit.search.zen import zen_of

    # x = (0, 1, 2) on a 1x3 map, eps = (0, 0, 2), alpha 0.5: x' = (0, 1, 3). Conv weight 2, BatchNorm in train
    # mode: f(x) = (-2, 0, 2) / sqrt(8/3), f(x') = (-8/3, -2/3, 10/3) / sqrt(56/9); the BN input's batch
    # variance on x is 4 * 2/3 = 8/3.
    x = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    eps = torch.tensor([0.0, 0.0, 2.0]).view(1, 1, 1, 3)
    f = [v / math.sqrt(8 / 3) for v in (-2, 0, 2)]
    fp = [v / math.sqrt(56 / 9) for v in (-8 / 3, -2 / 3, 10 / 3)]
    delta = math.sqrt(sum((a - b) ** 2 for a, b in zip(f, fp)))
    expected = math.log(delta) + 0.5 * math.log(8 / 3)
    assert zen_of(_conv_bn(2.0), x, eps, alpha=0.5) == pytest.approx(expected, rel=1e-5)
    # BatchNorm cancels the weight's scale in f; the BN term puts it back: x3 weight -> + log 3
    assert zen_of(_conv_bn(6.0), x, eps, 0.5) - zen_of(_conv_bn(2.0), x, eps, 0.5) == pytest.approx(math.log(3), abs=1e-5)


def test_zen_without_bn_or_pool_is_the_log_output_change():
    from slimkit.search.zen import zen_of

    net = nn.Sequential(nn.Linear(2, 2, bias=False))
    net[0].weight.data = torch.diag(torch.tensor([2.0, 0.0]))
    # f(x) - f(x + a*eps) = -a * W eps = -(0.02, 0) for eps = (1, 1), alpha 0.01
    assert zen_of(net, torch.zeros(1, 2), torch.ones(1, 2)) == pytest.approx(math.log(0.02), rel=1e-6)


def test_zen_proxy_is_data_free_and_seeded():
    x, y = torch.randn(4, 1, 6, 6), torch.zeros(4, dtype=torch.long)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    a = PROXIES.get("zen")(net, x, y)
    assert a == PROXIES.get("zen")(net, x * 100 + 7, y)  # only the batch's shape is used
    assert math.isfinite(a)


def test_deepmad_entropy_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    # fan-ins 1*9, 1*9 (depthwise), 4*1; last map 6 x 4 x 4 on an 8x8 input
    expected = math.log(6 * 16) * (math.log(9) + math.log(9) + math.log(4))
    assert PROXIES.get("deepmad")(net, torch.zeros(2, 1, 8, 8), None) == pytest.approx(expected, rel=1e-12)


def test_proxy_study_ranks_against_the_accuracy_function():
    from slimkit.search.rank import proxy_study, sample_distinct
    from slimkit.search.space import load_space

    space = load_space("tiny")
    archs = sample_distinct(space, 5, seed=1)
    assert len({a.key() for a in archs}) == 5
    # an "accuracy" that is exactly the params count: params ranks perfectly, -params perfectly backwards
    res = proxy_study(space, archs, lambda a: score(lambda: _child(space, a), torch.zeros(1, 1, 4, 4), None,
                                                     ["params"])["params"],
                      torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long), names=["params", "deepmad"])
    assert res["n"] == 5 and res["kendall_tau"]["params"] == pytest.approx(1.0) and set(res["kendall_tau"]) == {"params", "deepmad"}
    assert [r["scores"]["params"] for r in res["rows"]] == [r["accuracy"] for r in res["rows"]]


def _child(space, arch):
    from slimkit.search.child import ChildNet, child_spec

    return ChildNet(child_spec(space, arch))


def test_search_proxies_cli(monkeypatch, capsys, tmp_path):
    import json

    from cli_helpers import run_cli

    code, _, err = run_cli(monkeypatch, capsys, "search", "proxies", "tiny", "--proxies", "zen,nope")
    assert code == 2 and "unknown zero-cost proxy 'nope'" in err and err.strip().count("\n") == 0
    out_file = tmp_path / "px.json"
    code, out, err = run_cli(monkeypatch, capsys, "search", "proxies", "tiny", "--samples", "3", "--data", "digits",
                             "--train-samples", "64", "--val-samples", "32", "--proxies", "zen,deepmad,macs",
                             "--threads", "1", "--out", out_file)
    assert code == 0, err
    res = json.loads(out_file.read_text())
    assert res["n"] == 3 and set(res["kendall_tau"]) == {"zen", "deepmad", "macs"} and "Kendall tau" in out
    taus = rank_correlation([r["scores"] for r in res["rows"]], [r["accuracy"] for r in res["rows"]])
    assert taus == pytest.approx(res["kendall_tau"], nan_ok=True)
