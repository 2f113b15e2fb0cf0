"""The speed guard's logic with a stubbed clock: timings are exact numbers computed from each graph."""

import logging

import onnx
import pytest
import torch
import torch.nn as nn

from quant_helpers import FakeClock, one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.ptq import Int8Builder, QuantSettings, prepare_fp32
from slimkit.compress.quantize.speed_guard import OrtLatency, speed_groups, speed_guard
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


def graph_cost(gating_penalty=15.0, qdq_cost=0.2):
    """Stub cost in ms: int8 convs are cheap, int8 gating ops expensive, every Q/DQ costs a little.

    An op counts as int8 when all its non-constant inputs come from DequantizeLinear (what ORT fuses).
    """

    def cost(path):
        g = OnnxGraph(path)
        total = 0.0
        for node in g.nodes:
            feeds = [g.upstream(i) for i in node.input[:1 if node.op_type in ("Conv", "Gemm") else None]
                     if i and i not in g.initializers]
            dq_in = bool(feeds) and all(p is not None and p.op_type == "DequantizeLinear" for p in feeds)
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                total += qdq_cost
            elif node.op_type in ("Conv", "Gemm"):
                total += 2.0 if dq_in else 10.0
            elif node.op_type in ("Mul", "HardSigmoid", "GlobalAveragePool"):
                total += gating_penalty if dq_in else 1.0
            else:
                total += 1.0
        return total * 1e-3  # the fake clock counts seconds; Timing reports ms

    return cost


def test_guard_keeps_slow_gating_float(built):
    fp32, _, builder = built
    clock, cost = FakeClock(), graph_cost()
    latency = OrtLatency(SIZE, warmup=1, repetitions=6, rounds=3, clock=clock, runner=clock.runner_for(cost))
    g = OnnxGraph(builder.fp32_path)
    groups = speed_groups(g)
    result = speed_guard(builder.build, fp32, QuantSettings(), groups, latency)
    gating = {n.name for n in g.nodes if n.op_type in ("HardSigmoid", "Mul")}
    assert gating <= set(result.float_nodes) and all(why.startswith("speed: ") for why in result.float_nodes.values())
    tried = [t for t in result.trials if "kept_float" in t]
    assert tried and all((t["ratio_vs_current"] < 0.97) == t["kept_float"] for t in tried)
    assert result.trials[0]["group"] == "gating_activations" and result.trials[0]["kept_float"]
    # timings are the stub's exact costs, so the verdict is exactly computable
    assert result.fp32.median == pytest.approx(cost(fp32) * 1e3)
    assert result.int8.median == pytest.approx(cost(result.path) * 1e3)
    assert result.speedup == pytest.approx(cost(fp32) / cost(result.path)) and result.speedup > 1.03
    assert result.verdict == "faster" and not result.slower_than_fp32 and result.warning is None
    assert cost(result.path) < cost(builder.build(QuantSettings()))


def test_guard_says_loudly_when_int8_stays_slower(built, caplog):
    fp32, _, builder = built
    clock, cost = FakeClock(), graph_cost(gating_penalty=1.0, qdq_cost=50.0)
    latency = OrtLatency(SIZE, warmup=1, repetitions=4, rounds=2, clock=clock, runner=clock.runner_for(cost))
    with caplog.at_level(logging.WARNING, logger="slimkit.compress.quantize.speed_guard"):
        result = speed_guard(builder.build, fp32, QuantSettings(), speed_groups(OnnxGraph(builder.fp32_path)), latency)
    assert result.slower_than_fp32 and result.verdict == "slower"
    assert result.speedup == pytest.approx(cost(fp32) / cost(result.path)) and result.speedup < 1.0
    assert "SLOWER than fp32" in result.warning and "SLOWER than fp32" in caplog.text
    assert result.to_dict()["slower_than_fp32"] is True


def test_guard_without_candidates_only_times_fp32_vs_int8(built):
    fp32, _, builder = built
    clock = FakeClock()
    latency = OrtLatency(SIZE, warmup=0, repetitions=2, rounds=1, clock=clock, runner=clock.runner_for(graph_cost()))
    result = speed_guard(builder.build, fp32, QuantSettings(), {}, latency)
    assert latency.calls == 1 and result.trials == [] and result.float_nodes == {}
    assert onnx.load(str(result.path)).graph.node  # the all-int8 model itself
