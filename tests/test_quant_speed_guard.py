"""The speed guard's logic with a stubbed clock: timings are exact numbers computed from each graph."""

import logging

import onnx
import pytest
import torch
import torch.nn as nn

from quant_helpers import FakeClock, one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.ptq import Int8Builder, QuantSettings, prepare_fp32
from slimkit.compress.quantize.op_profile import UNATTRIBUTED, OrtOpProfiler, attribute, group_costs
from slimkit.compress.quantize.speed_guard import (OrtLatency, block_groups, fused_closure, losing_groups, speed_groups,
                                                   speed_guard)
from slimkit.deploy import export_onnx

SIZE = (1, 16, 16)


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool, self.fc1, self.relu = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(c // 4, c, 1), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


def se_net():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), SE(16), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("se")
    torch.manual_seed(0)
    export_onnx(se_net(), SIZE, d / "m.onnx")
    pre = prepare_fp32(d / "m.onnx", d / "pre.onnx")
    calib = torch.randn(32, *SIZE).numpy()
    return d / "m.onnx", pre, Int8Builder(pre, calib, d / "work")


def _ops(graph, names):
    return sorted(graph.by_name[n].op_type for n in names)


def test_speed_groups_find_se_gating_and_tiny_layers(built):
    _, pre, _ = built
    g = OnnxGraph(pre)
    groups = speed_groups(g)
    assert _ops(g, groups["se_blocks"]) == ["Conv", "Conv", "GlobalAveragePool", "HardSigmoid", "Mul", "Relu"]
    assert _ops(g, groups["gating_activations"]) == ["HardSigmoid", "Mul"]
    # MACs: conv1 16*9*256=36864, SE convs 64 each, conv2 32*16*9*256, linear 320; tiny = under 1% of the largest
    assert _ops(g, groups["tiny_layers"]) == ["Conv", "Conv", "Gemm"]
    assert "depthwise_convs" not in groups and "residual_adds" not in groups


def node_costs(gating_penalty=15.0, qdq_cost=0.2, conv_fp32=10.0):
    """Stub cost in ms per node: int8 convs are cheap, int8 gating ops expensive, every Q/DQ costs a little.

    An op counts as int8 when all its non-constant inputs come from DequantizeLinear (what ORT fuses).
    """

    def costs(path):
        g = OnnxGraph(path)
        out = {}
        for node in g.nodes:
            feeds = [g.upstream(i) for i in node.input[:1 if node.op_type in ("Conv", "Gemm") else None]
                     if i and i not in g.initializers]
            dq_in = bool(feeds) and all(p is not None and p.op_type == "DequantizeLinear" for p in feeds)
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                out[node.name] = qdq_cost
            elif node.op_type in ("Conv", "Gemm"):
                out[node.name] = 2.0 if dq_in else conv_fp32
            elif node.op_type in ("Mul", "HardSigmoid", "GlobalAveragePool"):
                out[node.name] = gating_penalty if dq_in else 1.0
            else:
                out[node.name] = 1.0
        return out

    return costs


def graph_cost(**kw):
    """Whole-model stub latency in seconds (the fake clock counts seconds; Timing reports ms)."""
    costs = node_costs(**kw)
    return lambda path: sum(costs(path).values()) * 1e-3


def stub_profiler(source: OnnxGraph, **kw):
    """The stub's per-node ms, attributed to the source graph's nodes exactly as ORT profiles are."""
    costs = node_costs(**kw)

    def profile(path):
        g = OnnxGraph(path)
        return attribute(costs(path), [(n.name, list(n.input), list(n.output)) for n in g.nodes], [n.name for n in source.nodes])

    return profile


def _guard(builder, fp32, latency_kw, profile_kw, **kw):
    clock = FakeClock()
    latency = OrtLatency(SIZE, warmup=1, repetitions=6, rounds=3, clock=clock, runner=clock.runner_for(graph_cost(**latency_kw)))
    g = OnnxGraph(builder.fp32_path)
    groups = {k: fused_closure(g, v) for k, v in speed_groups(g).items()}
    return g, groups, speed_guard(builder.build, fp32, QuantSettings(), groups, latency,
                                  profiler=stub_profiler(g, **profile_kw), profile_fp32=builder.fp32_path, **kw)


def test_guard_keeps_groups_that_lose_time_in_int8_float(built):
    """The gating ops are made 15x slower in int8: the profile flags the groups holding them, the mixed model
    that keeps them float is timed faster than all-int8 and fp32, and it is the one handed back."""
    fp32, _, builder = built
    kw = {"conv_fp32": 30.0}
    g, groups, result = _guard(builder, fp32, kw, kw)
    cost, costs = graph_cost(**kw), node_costs(**kw)
    # the decision is computed from the (stub) profile: every group's int8 - fp32 ms, by hand from node_costs
    int8_all = builder.build(QuantSettings())
    f, i = stub_profiler(g, **kw)(builder.fp32_path), stub_profiler(g, **kw)(int8_all)
    for name, row in result.profile["groups"].items():
        assert row["loss_ms"] == pytest.approx(sum(i.get(n, 0) for n in groups[name]) - sum(f.get(n, 0) for n in groups[name]))
    threshold = 0.01 * sum(costs(int8_all).values())
    assert result.profile["losing"] == [k for k, _ in sorted(
        ((k, r["loss_ms"]) for k, r in result.profile["groups"].items() if r["loss_ms"] > threshold), key=lambda t: -t[1])]
    gating = {n.name for n in g.nodes if n.op_type in ("HardSigmoid", "Mul")}
    assert "gating_activations" in result.profile["losing"] or "se_blocks" in result.profile["losing"]
    assert gating <= set(result.float_nodes) and all(why.startswith("speed: ") for why in result.float_nodes.values())
    kept = [t for t in result.trials if t["kept"]]
    assert len(kept) == 1 and kept[0]["float_groups"] and kept[0]["ratio_vs_int8"] == min(t["ratio_vs_int8"] for t in result.trials)
    # timings are the stub's exact costs, so the verdict is exactly computable
    assert kept[0]["ratio_vs_int8"] == pytest.approx(cost(result.path) / cost(int8_all))
    assert result.speedup == pytest.approx(cost(fp32) / cost(result.path)) and result.speedup > 1.03
    assert cost(result.path) < min(cost(int8_all), cost(fp32))
    assert result.verdict == "faster" and not result.slower_than_fp32 and result.warning is None


def test_guard_keeps_all_int8_when_the_mixed_model_measures_slower(built):
    """The profile says the gates lose time, but the stopwatch says float costs more: all-int8 stays."""
    fp32, _, builder = built
    _, _, result = _guard(builder, fp32, {"gating_penalty": 0.5}, {})
    assert result.profile["losing"] and result.float_nodes == {}
    assert [t["float_groups"] for t in result.trials if t["kept"]] == [[]]
    assert all(t["ratio_vs_int8"] > 1.0 for t in result.trials if t["float_groups"])
    assert result.path == builder.build(QuantSettings())


def test_guard_says_loudly_when_int8_stays_slower(built, caplog):
    fp32, _, builder = built
    with caplog.at_level(logging.WARNING, logger="slimkit.compress.quantize.speed_guard"):
        _, _, result = _guard(builder, fp32, {"gating_penalty": 1.0, "qdq_cost": 50.0}, {"gating_penalty": 1.0, "qdq_cost": 50.0})
    cost = graph_cost(gating_penalty=1.0, qdq_cost=50.0)
    assert result.slower_than_fp32 and result.verdict == "slower"
    assert result.speedup == pytest.approx(cost(fp32) / cost(result.path)) and result.speedup < 1.0
    assert "SLOWER than fp32" in result.warning and "SLOWER than fp32" in caplog.text
    assert result.to_dict()["slower_than_fp32"] is True


def test_guard_without_candidates_only_times_fp32_vs_int8(built):
    fp32, _, builder = built
    clock = FakeClock()
    latency = OrtLatency(SIZE, warmup=0, repetitions=2, rounds=1, clock=clock, runner=clock.runner_for(graph_cost()))
    result = speed_guard(builder.build, fp32, QuantSettings(), {}, latency, profiler=lambda p: {})
    assert latency.calls == 1 and result.trials == [] and result.float_nodes == {}
    assert onnx.load(str(result.path)).graph.node  # the all-int8 model itself


def test_attribute_charges_fused_renamed_and_generated_nodes_to_their_source():
    source = ["/a/Conv", "/a/Conv_1", "/b/Relu", "/c/Mul"]
    opt = [("input_QuantizeLinear", ["input"], ["xq"]),
           ("/a/Conv_token_3", ["xq"], ["/a/Conv_output_0_q"]),                # renamed: name prefix
           ("/a/Conv_1_token_7", ["/a/Conv_output_0_q"], ["y"]),               # longest prefix wins over /a/Conv
           ("fused_9", ["y"], ["/b/Relu_output_0_nchwc"]),                     # output tensor prefix
           ("QLinearMul_5", ["/b/Relu_output_0_nchwc"], ["z"]),                # generated: its input's producer
           ("Transpose", ["z"], ["out"])]
    ms = {"input_QuantizeLinear": 0.5, "/a/Conv_token_3": 2.0, "/a/Conv_1_token_7": 3.0, "fused_9": 4.0,
          "QLinearMul_5": 1.5, "Transpose": 0.25}
    got = attribute(ms, opt, source)
    assert got == {UNATTRIBUTED: 0.5, "/a/Conv": 2.0, "/a/Conv_1": 3.0, "/b/Relu": 5.75}
    assert sum(got.values()) == sum(ms.values())


def test_losing_groups_and_costs_by_hand():
    fp32 = {"dw": 1.0, "act": 0.0, "conv": 5.0, "add": 0.0}
    int8 = {"dw": 3.0, "act": 0.5, "conv": 2.0, "add": 0.75}
    groups = {"depthwise_convs": ["dw", "act"], "big": ["conv"], "residual_adds": ["add"]}
    assert group_costs(groups["depthwise_convs"], fp32, int8) == {"fp32_ms": 1.0, "int8_ms": 3.5, "loss_ms": 2.5}
    rows = losing_groups(groups, fp32, int8, min_loss_ms=0.5)
    assert [(r["group"], r["loss_ms"]) for r in rows] == [("depthwise_convs", 2.5), ("residual_adds", 0.75)]
    assert losing_groups(groups, fp32, int8, min_loss_ms=1.0)[0]["group"] == "depthwise_convs"


def test_real_profile_attributes_every_ms(built):
    """ORT's profiler on the small SE net: every profiled ms lands on a source node or UNATTRIBUTED, and every conv
    (with the activation fp32 fuses it with) is charged some of it. Shares of time are not asserted: on a 0.07 ms
    net they move with the machine's load."""
    fp32, pre, builder = built
    g = OnnxGraph(pre)
    prof = OrtOpProfiler(SIZE, [n.name for n in g.nodes], runs=3, warmup=1)
    for path in (pre, builder.build(QuantSettings())):
        ms, opt = prof.profile(path)
        got = attribute(ms, opt, [n.name for n in g.nodes])
        assert sum(got.values()) == pytest.approx(sum(ms.values())) and sum(ms.values()) > 0
        # fp32 runs each conv fused with its activation, profiled under the activation's name: the pair gets it
        for conv in (n.name for n in g.nodes if n.op_type == "Conv"):
            assert sum(got.get(c, 0) for c in fused_closure(g, [conv])) > 0, (path.name, conv)
    assert set(prof(builder.build(QuantSettings()))) - {UNATTRIBUTED} <= {n.name for n in g.nodes}


def test_hard_swish_group_is_named_and_closed_over_its_conv(tmp_path):
    """ORT inlines HardSwish into nameless HardSigmoid + Mul: prepare_fp32 names them, so they can be priced and
    kept float, and the group takes the conv fp32 fuses them with."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    export_onnx(net, SIZE, tmp_path / "m.onnx")
    g = OnnxGraph(prepare_fp32(tmp_path / "m.onnx", tmp_path / "pre.onnx"))
    assert all(n.name for n in g.nodes)
    hswish = speed_groups(g)["hard_swish"]
    assert hswish and {g.by_name[n].op_type for n in hswish} <= {"HardSwish", "HardSigmoid", "Mul"}
    closed = fused_closure(g, hswish)
    assert [g.by_name[n].op_type for n in closed if n not in hswish] == ["Conv"]
    assert g.upstream(g.by_name[closed[-1]].output[0]) is g.by_name[closed[-1]] and closed[-1] == g.nodes[0].name


def test_block_groups_follow_the_exported_module_path(built):
    _, pre, _ = built
    g = OnnxGraph(pre)
    blocks = block_groups(g, depth=1)
    # se_net's only multi-node module is the SE block at index 2 (pool, fc1, relu, fc2, gate, and the scaling Mul)
    assert list(blocks) == ["/2"]
    assert _ops(g, blocks["/2"]) == ["Conv", "Conv", "GlobalAveragePool", "HardSigmoid", "Mul", "Relu"]
    assert block_groups(g, depth=2) == {}  # no module two levels down holds two nodes


def test_guard_times_the_losing_blocks_and_keeps_the_fastest(built):
    """With blocks given, every block that profiles slower in int8 is a float candidate of its own; the
    stopwatch (exact stub costs) picks among all candidates, and the float nodes name the block candidate."""
    fp32, _, builder = built
    kw = {}  # int8 gates cost 15x: the SE block's gates lose more than its two small convs gain
    g = OnnxGraph(builder.fp32_path)
    blocks = block_groups(g, depth=1)
    _, _, result = _guard(builder, fp32, kw, kw, blocks=blocks)
    assert result.profile["losing_blocks"] == ["/2"]
    timed = {"+".join(t["float_groups"]) for t in result.trials}
    assert "losing_blocks" in timed and any(k.startswith("losing_blocks+") for k in timed)
    kept = [t for t in result.trials if t["kept"]]
    assert len(kept) == 1 and kept[0]["ratio_vs_int8"] == min(t["ratio_vs_int8"] for t in result.trials)
    cost = graph_cost(**kw)
    assert result.speedup == pytest.approx(cost(fp32) / cost(result.path))
    if kept[0]["float_groups"][0] == "losing_blocks":
        assert set(blocks["/2"]) <= set(result.float_nodes)
