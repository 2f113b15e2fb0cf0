"""Allocation latency-table: the per-layer table's lookups, the greedy path by hand, a fake table steering the
cut, and tables that do not fit (another model, input, thread count, machine). No wall-clock asserts."""

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.latency_alloc import latency_path
from slimkit.compress.prune.layer_ops import DEFAULT_GRID, layer_specs, spec_key, table_ops
from slimkit.compress.prune.layer_table import LayerTable
from slimkit.compress.prune.structured import GroupPlan, Plan
from slimkit.errors import BadInputError
from slimkit.search.latency import conditions

X = torch.randn(1, 3, 8, 8)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _ms(v: float) -> dict:
    return {"median_ms": v, "iqr_ms": 0.0, "p90_ms": v, "min_ms": v, "repetitions": 1}


def _fake_table(model: nn.Module, cost, threads: int = 1) -> LayerTable:
    """Every op the builder would time, with `cost(layer, ci, co)` ms; no overhead; whole = sum + 1 ms."""
    specs = layer_specs(model, X)
    owner = {spec_key(s, s["in"], s["out"]): n for n, s in specs.items()}
    entries = {}
    for key, (spec, ci, co) in table_ops(specs, DEFAULT_GRID).items():
        name = next(n for n, s in specs.items() if s == spec)
        entries[key] = _ms(cost(name, ci, co))
    whole = sum(entries[k]["median_ms"] for k in owner) + 1.0
    return LayerTable(conditions(threads, 1, 1), list(X.shape), specs, entries, _ms(0.0), _ms(whole), dict(DEFAULT_GRID))


def _macs_like(name, ci, co) -> float:
    return ci * co / 100.0


def test_lookup_reproduces_stored_figures_and_round_trips(tmp_path):
    table = _fake_table(_net(), _macs_like)
    table.overhead = _ms(0.5)
    for key, entry in table.entries.items():
        assert table.lookup(key) == entry["median_ms"]
    path = table.save(tmp_path / "t.json")
    back = LayerTable.load(path)
    assert back.entries == table.entries and back.layers == table.layers and back.input == [1, 3, 8, 8]
    # Layer "3" (conv 16 -> 32): on a grid point the stored op minus the overhead ...
    assert back.net_ms("3", 16, 24) == pytest.approx(16 * 24 / 100 - 0.5)
    # ... off both lines the separable product T(ci, Co) * T(Ci, co) / T(Ci, Co), overhead removed.
    a, b, full = 16 * 8 / 100 - 0.5, 8 * 32 / 100 - 0.5, 16 * 32 / 100 - 0.5
    assert back.net_ms("3", 8, 8) == pytest.approx(a * b / full)
    # Between grid points (out line 8, 16, 24, 32): linear.
    assert back.net_ms("3", 16, 20) == pytest.approx((16 * 16 / 100 + 16 * 24 / 100) / 2 - 0.5)


CONV = {"op": "conv2d", "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1,
        "depthwise": False, "bias": True, "hw": [8, 8]}
A_B = {"a": {**CONV, "in": 3, "out": 16}, "b": {**CONV, "in": 16, "out": 16}}
A_B_COSTS = {("a", 3, 16): 4.0, ("a", 3, 8): 2.5, ("b", 16, 16): 10.0, ("b", 16, 8): 6.0, ("b", 8, 16): 7.0}


def _hand_table(layers: dict, costs: dict) -> LayerTable:
    """A table holding exactly `costs` ((layer, in, out) -> ms), no overhead, the whole model at 20 ms."""
    entries = {spec_key(layers[n], ci, co): _ms(v) for (n, ci, co), v in costs.items()}
    return LayerTable(conditions(1, 1, 1), [1, 3, 8, 8], layers, entries, _ms(0.0), _ms(20.0), dict(DEFAULT_GRID))


def _group(root, size, dims, imp=None) -> GroupPlan:
    return GroupPlan(root, True, 1, size, torch.ones(size) if imp is None else imp, dims)


def test_greedy_path_by_hand():
    """Two groups of 16 (equal scores): A cuts layer a's output and b's input, B cuts b's output and fc's input.
    Costs: a(3,16)=4, a(3,8)=2.5; b(16,16)=10, b(16,8)=6, b(8,16)=7; fc(16,10)=1, fc(8,10)=0.9; whole 20."""
    layers = {**A_B, "fc": {"op": "linear", "in": 16, "out": 10, "bias": True, "rows": 1}}
    table = _hand_table(layers, {**A_B_COSTS, ("fc", 16, 10): 1.0, ("fc", 8, 10): 0.9})
    plan = Plan([_group("a", 16, [("a", "out", 16), ("b", "in", 16)]),
                 _group("b", 16, [("b", "out", 16), ("fc", "in", 16)])])
    path = latency_path(plan, table, 8, 0.9)
    # A saves 1.5 + 3 = 4.5 ms for 8 units of importance (0.5625/unit), B 4 + 0.1 = 4.1 (0.5125): A first.
    # Then B at b's input 8: b(8,8) = 6 * 7 / 10 = 4.2 (separable), so B saves 7 - 4.2 + 0.1 = 2.9 ms.
    assert [p[0] for p in path.points] == [[16, 16], [8, 16], [8, 8]]
    assert [p[1] for p in path.points] == pytest.approx([1.0, 15.5 / 20, 12.6 / 20])
    assert path.at(0.2) == [8, 16] and path.at(0.3) == [8, 8] and path.at(0.0) == [16, 16]


def test_a_channel_carrying_more_macs_loses_more():
    """The hand-made path's groups with MACs per slot 2 (A) and 1 (B): a slot's loss is its score times its MACs
    over the mean group's (4/3 and 2/3), so B's 4.1 ms per 5.33 now beats A's 4.5 ms per 10.67."""
    table = _hand_table(A_B, A_B_COSTS)
    a, b = _group("a", 16, [("a", "out", 16), ("b", "in", 16)]), _group("b", 16, [("b", "out", 16)])
    a.cost, b.cost = 2.0, 1.0
    assert [p[0] for p in latency_path(Plan([a, b]), table, 8, 0.9).points] == [[16, 16], [16, 8], [8, 8]]


def test_importance_weighs_against_latency():
    """The same two groups; B's lowest half is worth almost nothing, so B's 4.1 ms per 0.08 wins over A."""
    table = _hand_table(A_B, A_B_COSTS)
    imp_b = torch.tensor([0.01] * 8 + [1.99] * 8)
    plan = Plan([_group("a", 16, [("a", "out", 16), ("b", "in", 16)]), _group("b", 16, [("b", "out", 16)], imp_b)])
    assert latency_path(plan, table, 8, 0.9).points[1][0] == [16, 8]


def test_expensive_layer_is_cut_first(tmp_path):
    """A fake table where layer 0 (the first conv) costs 1000x per channel: its group alone is cut."""
    model = _net()
    table = _fake_table(model, lambda n, ci, co: _macs_like(n, ci, co) * (1000 if n == "0" else 1))
    path = table.save(tmp_path / "t.json")
    result = prune_(model, PruneConfig(target=None, ratio=0.3, allocation="latency-table", latency_table=str(path)), X)
    kept = {n: k["after"] for n, k in result.kept.items()}
    assert kept == {"0": 8, "3": 32, "6": 16, "10": 10}
    assert model[0].out_channels == 8 and model[3].in_channels == 8
    assert any("read from" in n for n in result.notes)


def test_macs_target_on_a_table_meets_the_measured_macs(tmp_path):
    model = _net()
    path = _fake_table(model, _macs_like).save(tmp_path / "t.json")
    result = prune_(model, PruneConfig(target="macs=0.5", allocation="latency-table", latency_table=str(path)), X)
    assert abs(result.achieved / 0.5 - 1) <= 0.1
    assert all(k["after"] % 8 == 0 for n, k in result.kept.items() if n != "10")  # widths from the table's grid


@pytest.mark.parametrize("change, message", [
    (lambda t: t.layers.__setitem__("3", {**t.layers["3"], "out": 24}), "built for another model: layer 3"),
    (lambda t: setattr(t, "input", [1, 3, 16, 16]), "built for input [1, 3, 16, 16]"),
    (lambda t: t.conditions.__setitem__("threads", 4), "timed with 4 ONNX Runtime thread"),
])
def test_a_table_that_does_not_fit_is_refused(tmp_path, change, message):
    model = _net()
    table = _fake_table(model, _macs_like)
    change(table)
    path = table.save(tmp_path / "t.json")
    with pytest.raises(BadInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        prune_(model, PruneConfig(target="macs=0.5", allocation="latency-table", latency_table=str(path)), X)


def test_a_table_from_another_cpu_warns_loudly(tmp_path, caplog):
    model = _net()
    table = _fake_table(model, _macs_like)
    table.conditions["cpu"] = "Some Other CPU"
    path = table.save(tmp_path / "t.json")
    with caplog.at_level(logging.WARNING):
        result = prune_(model, PruneConfig(target="macs=0.5", allocation="latency-table", latency_table=str(path)), X)
    assert any("MEASURED ELSEWHERE" in r.getMessage() and "Some Other CPU" in r.getMessage() for r in caplog.records)
    assert any("measured elsewhere: cpu" in n for n in result.notes)


def test_config_rejects_a_table_without_its_allocation():
    with pytest.raises(BadInputError, match="allocation latency-table only"):
        PruneConfig(latency_table="t.json")
    with pytest.raises(BadInputError, match="schedule oneshot"):
        PruneConfig(allocation="latency-table", schedule="iterative", epochs=1)
    cfg = PruneConfig(allocation="latency-table", latency_table="t.json")
    assert PruneConfig.from_json(cfg.to_json()) == cfg


def test_cli_table_for_another_model_exits_2_on_one_line(monkeypatch, tmp_path, capsys):
    from slimkit.cli.main import main

    path = _fake_table(_net(), _macs_like).save(tmp_path / "t.json")
    demo = str(Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.py") + ":digits_cnn"
    monkeypatch.setattr(sys, "argv", ["slimkit", "prune", demo, "--target", "macs=0.5", "--input-size", "3x8x8",
                                      "--latency-table", str(path), "--no-latency", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "built for another model" in err
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_table_is_refused(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"format": "slimkit-latency-table"}))
    with pytest.raises(BadInputError, match="not a slimkit per-layer latency table"):
        LayerTable.load(bad)


@pytest.mark.slow
def test_built_table_times_every_op_and_reads_back(tmp_path):
    """A real build (export, ONNX Runtime, interleaved): every op of the grid, the overhead and the whole model."""
    from slimkit.compress.prune.layer_ops import build_layer_table

    model = _net().eval()
    table = build_layer_table(model, X, 1, repetitions=2, rounds=1)
    assert set(table.entries) == set(table_ops(layer_specs(model, X), DEFAULT_GRID))
    assert table.conditions["threads"] == 1 and table.input == [1, 3, 8, 8] and table.whole_ms > 0
    back = LayerTable.load(table.save(tmp_path / "t.json"))
    assert all(back.lookup(k) == e["median_ms"] for k, e in table.entries.items())
    assert back.check(model, X, 1) == []  # same model, input, threads and machine: no complaint
    assert back.predict_model_ms(model, X) == pytest.approx(back.whole_ms)


def test_latency_target_corrects_the_prediction_by_the_measured_miss(monkeypatch):
    """A table 20% optimistic: the point predicted at 0.6 measures 0.72; rescaled, the next point (predicted
    0.5) measures 0.6, within 2% of the target: two measurements, the second kept."""
    import slimkit.compress.prune.search as search
    from slimkit.compress.prune.latency_alloc import LatencyPath

    path = LatencyPath(None, [([i], 1.0 - i / 10) for i in range(7)])

    def timed(model, x, plan, cfg, keeps, round_to, level, reference, check):
        return search.Trial(level, round_to, keeps, 100 - keeps[0], 0, (1.0 - keeps[0] / 10) * 1.2)

    monkeypatch.setattr(search, "ort_runner", lambda *a: None)
    monkeypatch.setattr(search, "_timed_trial", timed)
    best, trials = search.search_latency_table(None, None, None, 0.6, PruneConfig(target="latency=0.6"), path, None)
    assert [t.keeps for t in trials] == [[4], [5]] and best.keeps == [5]
    assert [t.predicted for t in trials] == pytest.approx([0.6, 0.5]) and best.ratio == pytest.approx(0.6)
