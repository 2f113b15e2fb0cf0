"""Static QDQ int8 PTQ on a digits CNN trained inside the test: graph form, accuracy, calibration, mixed precision."""

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from quant_helpers import SIZE, FakeClock, digits_tensors, trained, one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize.calib import load_quant_data
from slimkit.compress.quantize.config import PTQConfig
from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.int8_format import choose_format
from slimkit.compress.quantize.ort_eval import accuracy
from slimkit.compress.quantize.pipeline import quantize_ptq
from slimkit.compress.quantize.ptq import Int8Builder, QuantSettings, prepare_fp32
from slimkit.compress.quantize.sensitivity import keep_sensitive_float, layer_sensitivity
from slimkit.compress.quantize.speed_guard import OrtLatency
from slimkit.deploy import export_onnx


def fake_latency(clock=None):
    clock = clock or FakeClock()
    cost = lambda path: 1e-3 * len(onnx.load(str(path)).graph.node)  # noqa: E731  (deterministic, not wall-clock)
    return OrtLatency(SIZE, warmup=1, repetitions=4, rounds=2, clock=clock, runner=clock.runner_for(cost))


@pytest.fixture(scope="module")
def quant_data():
    return load_quant_data("digits", SIZE, calib_samples=128, val_samples=None)


def _qdq_convs(path):
    """For each Conv: (input from DequantizeLinear, weight = DQ(int8 initializer), weight scale shape)."""
    g = OnnxGraph(path)
    inits = {t.name: t for t in g.model.graph.initializer}
    rows = []
    for node in g.nodes:
        if node.op_type != "Conv":
            continue
        x_dq, w_dq = g.upstream(node.input[0]), g.upstream(node.input[1])
        w_int8 = w_dq is not None and inits.get(w_dq.input[0]) is not None and inits[w_dq.input[0]].data_type == onnx.TensorProto.INT8
        scale_shape = tuple(inits[w_dq.input[1]].dims) if w_int8 else None
        rows.append((x_dq is not None and x_dq.op_type == "DequantizeLinear", w_int8, scale_shape))
    return rows


def test_ptq_pipeline_qdq_graph_and_accuracy(tmp_path, quant_data):
    model = trained("plain")
    report = quantize_ptq(model, SIZE, quant_data, PTQConfig(calib_samples=128, max_drop=1.0), tmp_path / "q",
                          latency=fake_latency())
    out = tmp_path / "q"
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.onnx", "report.json"]
    convs = _qdq_convs(out / "model.int8.onnx")
    assert [r[:2] for r in convs] == [(True, True)] * 3
    assert [r[2] for r in convs] == [(16,), (32,), (64,)]  # per-channel weight scales
    _, (vx, vy) = digits_tensors()
    acc8 = accuracy(out / "model.int8.onnx", vx.numpy(), vy.numpy())
    acc32 = accuracy(out / "model.onnx", vx.numpy(), vy.numpy())
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"]["int8"] == pytest.approx(acc8) and saved["accuracy"]["fp32"] == pytest.approx(acc32)
    assert acc32 - acc8 <= 1.0 and saved["accuracy"]["met"] is True
    assert saved["size_bytes"]["int8"] < saved["size_bytes"]["fp32"] == (out / "model.onnx").stat().st_size
    assert set(saved["latency_ms"]) == {"fp32", "int8", "speedup"} and saved["export"]["check"]["passed"]
    assert saved["latency"]["int8"]["repetitions"] == 4
    # the fake clock makes a call cost 1 ms per graph node, so the verdict is exactly computable: QDQ nodes make
    # the int8 graph longer, hence "slower", flagged and warned about
    nodes = {k: len(onnx.load(str(out / f)).graph.node) for k, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx"))}
    assert nodes["int8"] > nodes["fp32"]
    assert saved["latency_ms"]["fp32"] == pytest.approx(nodes["fp32"]) and saved["latency_ms"]["int8"] == pytest.approx(nodes["int8"])
    guard = saved["speed_guard"]
    assert guard["speedup"] == pytest.approx(nodes["fp32"] / nodes["int8"])
    assert guard["verdict"] == "slower" and guard["slower_than_fp32"] and "SLOWER" in guard["warning"]
    assert report["preprocess"]["depthwise"] is False and report["preprocess"]["equalize"] is None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    export_onnx(trained("plain"), SIZE, d / "m.onnx")
    return prepare_fp32(d / "m.onnx", d / "pre.onnx")


def _activation_scales(path):
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_calibration_methods_and_granularity(tmp_path, prepared, quant_data):
    builder = Int8Builder(prepared, quant_data.calib_x, tmp_path)
    scales = {m: _activation_scales(builder.build(QuantSettings(method=m))) for m in ("minmax", "percentile", "entropy")}
    assert scales["minmax"].keys() == scales["percentile"].keys() == scales["entropy"].keys()
    # percentile ranges lie inside the observed min/max, and clip at least one tensor
    assert all(scales["percentile"][k] <= scales["minmax"][k] * (1 + 1e-6) for k in scales["minmax"])
    assert any(scales["percentile"][k] < scales["minmax"][k] * 0.999 for k in scales["minmax"])
    assert scales["entropy"] != scales["minmax"]
    per_tensor = _qdq_convs(builder.build(QuantSettings(per_channel=False)))
    assert [r[2] for r in per_tensor] == [()] * 3
    symmetric = onnx.load(str(builder.build(QuantSettings(symmetric_activations=True))))
    act_zps = {n.input[2] for n in symmetric.graph.node if n.op_type == "QuantizeLinear"}
    zps = [t for t in symmetric.graph.initializer if t.name in act_zps]
    assert zps and all(t.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(t) == 0 for t in zps)
    builds = builder.builds
    builder.build(QuantSettings(method="entropy"))
    assert builder.builds == builds  # identical settings are served from the cache


def test_mixed_precision_search_is_logarithmic():
    ranking = [f"layer{i}" for i in range(10)]
    evaluated = []

    def build(settings):
        return len(settings.exclude)  # stands in for a path: the number of float layers

    def evaluate(k):
        evaluated.append(k)
        return 90.0 + k

    result = keep_sensitive_float(build, QuantSettings(), ranking, evaluate, fp32_accuracy=95.0, max_drop=1.0)
    assert result.met and result.float_layers == ranking[:4] and result.accuracy == 94.0
    assert evaluated == [0, 1, 2, 4, 3]  # doubling, then bisection
    miss = keep_sensitive_float(build, QuantSettings(), ranking[:3], lambda k: 80.0 + k, 95.0, 1.0)
    assert not miss.met and miss.float_layers == ranking[:3]


def test_sensitivity_finds_a_damaged_layer_and_keeps_it_float(tmp_path, quant_data):
    model = trained("plain")
    with torch.no_grad():
        # One outlier ruins per-tensor int8. It sits on a weight that reads a channel made dead (its BN shifted
        # below zero before the ReLU), so fp32 is unchanged by it on any CPU, where an outlier on a live weight
        # also wrecks fp32 (to 21% top-1 on an AVX-512 machine's trained weights) and leaves int8 nothing to lose.
        model[1].weight[0], model[1].bias[0] = 0.0, -1.0
        model[4].weight[0, 0, 1, 1] = 40 * model[4].weight.abs().max()
    export_onnx(model, SIZE, tmp_path / "m.onnx")
    pre = prepare_fp32(tmp_path / "m.onnx", tmp_path / "pre.onnx")
    builder = Int8Builder(pre, quant_data.calib_x, tmp_path / "w")
    layers = [l.name for l in OnnxGraph(pre).layers()]
    from slimkit.compress.quantize.ort_eval import predict

    x = quant_data.calib_x[:64]
    settings = QuantSettings(per_channel=False, weights=choose_format().weights)  # s7 where pairs can saturate
    ranking = layer_sensitivity(builder.build, settings, layers, x, predict(pre, x))
    assert ranking[0][0] == "/4/Conv" and ranking[0][1] > 10 * ranking[1][1]
    cfg = PTQConfig(per_channel=False, max_drop=0.5, speed_guard=False)
    report = quantize_ptq(model, SIZE, quant_data, cfg, tmp_path / "q", latency=fake_latency())
    assert report["sensitivity"]["needed"] and report["sensitivity"]["drop_all_int8"] > 0.5
    assert "/4/Conv" in report["float_nodes"] and report["accuracy"]["drop"] <= 0.5


def test_pipeline_tune_reports_both_counts(tmp_path, quant_data):
    model = trained("plain")
    cfg = PTQConfig(calib_samples=128, max_drop=1.0, speed_guard=False)
    report = quantize_ptq(model, SIZE, quant_data, cfg, tmp_path / "t", tune=True, latency=fake_latency())
    tune = report["tune"]
    # 3 methods x 2 granularities x 2 schemes x float_layers in (0, 1, 2, 4): the CNN has 4 weighted layers
    assert tune["strategy"] == "quantune-gbt" and tune["grid_size"] == 3 * 2 * 2 * 4
    assert 0 < tune["evaluations"] < tune["grid_size"] and len(tune["trials"]) == tune["evaluations"]
    best = tune["best"]["config"]
    assert report["settings"]["method"] == best["method"] and report["settings"]["per_channel"] == best["per_channel"]
    assert report["accuracy"]["drop"] <= 1.0


def test_config_round_trip(tmp_path):
    from slimkit.compress.quantize.config import load_config
    from slimkit.errors import BadInputError

    cfg = PTQConfig(method="entropy", per_channel=False, exclude=["/4/Conv"])
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    (tmp_path / "c.json").write_text(cfg.to_json())
    assert load_config(tmp_path / "c.yaml") == cfg == load_config(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text('{"kind": "ptq", "method": "magic"}')
    with pytest.raises(BadInputError, match="method"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(BadInputError, match="kind"):
        load_config({"method": "minmax"})


def test_quantizer_registry():
    from slimkit.compress.quantize import get_quantizer, list_quantizers, register_quantizer
    from slimkit.compress.quantize.api import quantize_with_codebook, quantize_with_ptq, quantize_with_qat
    from slimkit.errors import BadInputError

    assert list_quantizers() == ["codebook", "ptq", "qat"]
    assert get_quantizer("PTQ") is quantize_with_ptq and get_quantizer("qat") is quantize_with_qat
    assert get_quantizer("codebook") is quantize_with_codebook
    from slimkit.compress.quantize import registry

    register_quantizer("noop")(lambda model, *a, **k: model)
    try:
        assert "noop" in list_quantizers() and get_quantizer("noop")(5) == 5
    finally:
        registry._QUANTIZERS.pop("noop")
    with pytest.raises(BadInputError, match="unknown quantizer"):
        get_quantizer("fp4")


def test_depthwise_model_gets_equalization_and_bias_correction(tmp_path, quant_data):
    model = trained("dw")
    report = quantize_ptq(model, SIZE, quant_data, PTQConfig(calib_samples=128, max_drop=1.0), tmp_path / "dw",
                          latency=fake_latency())
    pre = report["preprocess"]
    assert pre["depthwise"] and pre["equalize"]["pairs"] == 4 and pre["bias_correction"]["layers"] == 6
    assert report["accuracy"]["drop"] <= 1.0 and report["export"]["check"]["passed"]
    convs = _qdq_convs(tmp_path / "dw" / "model.int8.onnx")
    float_convs = [n for n in report["float_nodes"] if n.endswith("/Conv")]
    assert len(convs) == 5 and sum(x_dq and w_int8 for x_dq, w_int8, _ in convs) == 5 - len(float_convs)


@pytest.mark.parametrize("penalty, kept", [(5.0, "checked"), (0.0, "mixed")])
def test_speed_guard_never_buys_speed_with_the_accuracy_budget(tmp_path, quant_data, monkeypatch, penalty, kept):
    """A faster mixed model that breaks --max-drop gives way to the accuracy-checked model; one within it stays."""
    from slimkit.compress.quantize import pipeline
    from slimkit.compress.quantize.speed_guard import SpeedGuardResult, final_check

    mixed = {}

    def guard(build, fp32_path, settings, groups, latency, **kwargs):
        faster = replace(settings, exclude=settings.exclude | {"/4/Conv"})
        mixed["path"] = build(faster)
        return final_check(latency, fp32_path, SpeedGuardResult(faster, mixed["path"],
                                                                float_nodes={"/4/Conv": "speed: test"}))

    real_accuracy = pipeline.accuracy
    monkeypatch.setattr(pipeline, "speed_guard", guard)
    monkeypatch.setattr(pipeline, "accuracy", lambda path, x, y: real_accuracy(path, x, y) - (
        penalty if Path(path) == mixed.get("path") else 0.0))
    report = quantize_ptq(trained("plain"), SIZE, quant_data, PTQConfig(calib_samples=128, max_drop=1.0),
                          tmp_path / "q", latency=fake_latency())
    gate = report["speed_guard"]["accuracy_gate"]
    if kept == "checked":
        assert gate["kept"] == "checked" and gate["mixed_drop"] > 1.0 >= gate["checked_drop"]
        assert "/4/Conv" not in report["float_nodes"] and "/4/Conv" not in report["settings"]["exclude"]
        assert report["accuracy"]["drop"] == pytest.approx(gate["checked_drop"]) and report["accuracy"]["met"]
        assert report["speed_guard"]["fp32_ms"] is not None  # the kept model was timed against fp32 again
    else:
        assert gate is None and report["float_nodes"]["/4/Conv"] == "speed: test"
