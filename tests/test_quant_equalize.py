"""Cross-layer equalization, batch-norm folding and bias correction: exact function preservation and measured effects."""

import copy

import pytest
import torch
import torch.nn as nn

from quant_helpers import SIZE, depthwise_cnn, one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize.bias_correction import correct_bias_, quantize_weight, weight_error_shift
from slimkit.compress.quantize.equalize import ChannelClip, channel_ranges, equalize_
from slimkit.compress.quantize.fold import fold_batchnorm_
from slimkit.errors import BadInputError


def uneven(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and per-channel weight scales spread over four decades: what hurts int8."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(10 ** (4 * torch.rand(m.out_channels, 1, 1, 1, generator=gen) - 2))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_var.uniform_(0.5, 2, generator=gen)
                m.weight.uniform_(0.5, 2, generator=gen)
                m.bias.uniform_(0.0, 1.0, generator=gen)
    return model.eval()


def max_rel_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


def test_fold_batchnorm_is_exact():
    model = uneven(depthwise_cnn())
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm_(folded)
    assert [c for c, _ in pairs] == ["0", "3", "6", "10", "13"]
    assert max_rel_diff(model, folded, torch.randn(8, *SIZE)) < 1e-5
    bn = folded.get_submodule("1")
    assert torch.all(bn.running_mean == 0) and torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_cle_preserves_function_and_equalizes_ranges():
    model = uneven(depthwise_cnn(nn.ReLU))
    eq = copy.deepcopy(model)
    report = equalize_(eq)
    assert report.pairs == [("0", "3"), ("3", "6"), ("6", "10"), ("10", "13")] and report.skipped == []
    assert report.max_log_scale < 1e-4
    assert max_rel_diff(model, eq, torch.randn(8, *SIZE)) < 1e-5
    for first, second in report.pairs:
        r1 = channel_ranges(eq.get_submodule(first), as_input=False)
        r2 = channel_ranges(eq.get_submodule(second), as_input=True)
        torch.testing.assert_close(r1, r2, rtol=1e-3, atol=0)
    before, after = channel_ranges(model[3], False), channel_ranges(eq[3], False)
    assert (after.max() / after.min()) < 0.01 * (before.max() / before.min())  # depthwise ranges evened out


def test_cle_relu6_policies():
    model = uneven(depthwise_cnn(nn.ReLU6))
    x = torch.randn(8, *SIZE) * 3
    exact = copy.deepcopy(model)
    rep = equalize_(exact, relu6="clip")
    assert len(rep.pairs) == 4 and max_rel_diff(model, exact, x) < 1e-5
    assert sum(isinstance(m, ChannelClip) for m in exact.modules()) == 4
    paper = copy.deepcopy(model)
    equalize_(paper, relu6="relu")
    assert not any(isinstance(m, (nn.ReLU6, ChannelClip)) for m in [paper[2], paper[5], paper[8], paper[12]])
    skip = copy.deepcopy(model)
    rep = equalize_(skip, relu6="skip")
    assert rep.pairs == [] and len(rep.skipped) == 4 and max_rel_diff(model, skip, x) < 1e-5
    with pytest.raises(BadInputError):
        equalize_(copy.deepcopy(model), relu6="maybe")


def test_cle_does_not_scale_through_a_shared_relu6():
    act = nn.ReLU6()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), act, nn.Conv2d(4, 4, 3, groups=4), act).eval()
    rep = equalize_(model)
    assert rep.pairs == [] and rep.skipped == [("0", "2", "relu6 module shared with other layers")]


def _quantized_weights(model: nn.Module, per_channel: bool) -> nn.Module:
    q = copy.deepcopy(model)
    with torch.no_grad():
        for m in q.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(quantize_weight(m.weight, per_channel))
    return q


def _ort_dequantized_weight(w: torch.Tensor, per_channel: bool, tmp_path) -> torch.Tensor:
    """ONNX Runtime's own int8 weight: quantize_static (QDQ, symmetric int8 weights, as slimkit's PTQ calls it)
    on a one-conv model, then the weight's DequantizeLinear run in an ORT session."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from slimkit.deploy.onnx_export import ort_session

    cin = w.shape[1]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "one_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.numpy(), "w")])
    fp32, int8 = tmp_path / f"conv{per_channel}.onnx", tmp_path / f"conv{per_channel}.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(i).standard_normal((1, cin, 4, 4)).astype(np.float32)}
                                 for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    model = onnx.load(str(int8))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    assert dq.op_type == "DequantizeLinear"
    inits = {t.name for t in model.graph.initializer}
    assert set(dq.input) <= inits  # the weight is an int8 initializer, not computed at run time
    del model.graph.node[:]
    model.graph.node.append(dq)
    del model.graph.input[:], model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(dq.output[0], TensorProto.FLOAT, None))
    path = tmp_path / f"dq{per_channel}.onnx"
    onnx.save(model, path)
    return torch.from_numpy(ort_session(path, threads=1).run(None, {})[0])


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_weight_matches_onnxruntime_rounding(per_channel, tmp_path):
    """The weight rounding bias correction models is ONNX Runtime's, bit for bit (scale max|w| / 127)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.tensor([[1.0, -0.5, 0.26, 0.003], [0.1, 0.0, -0.02, 0.07]])
    spread = torch.randn(6, 4, generator=gen) * 10 ** torch.linspace(-3, 1, 6).view(6, 1)  # four decades
    w = torch.cat([rows, spread]).view(8, 4, 1, 1)
    ort = _ort_dequantized_weight(w, per_channel, tmp_path)
    ours = quantize_weight(w, per_channel=per_channel)
    torch.testing.assert_close(ours, ort, rtol=1e-6, atol=1e-9)  # a rounding step is >= 1/127 of the row max
    if per_channel:  # by hand, first row: scale 1/127, each value rounded to the nearest step
        torch.testing.assert_close(ours[0].flatten(), torch.round(rows[0] * 127) / 127)


def test_bias_correction_removes_the_mean_shift():
    torch.manual_seed(0)
    model = uneven(depthwise_cnn(nn.ReLU))
    fold_batchnorm_(model)
    calib, held_out = torch.randn(256, *SIZE), torch.randn(256, *SIZE)
    before = weight_error_shift(model, calib, per_channel=False)
    corrected = copy.deepcopy(model)
    report = correct_bias_(corrected, calib, per_channel=False)
    assert report.layers == 6 and max(report.shift_norm.values()) > 0
    # layer level, same float inputs: quantized weights + corrected bias have exactly the float mean
    conv = "3"
    inputs = {}
    hook = model.get_submodule(conv).register_forward_pre_hook(lambda m, a: inputs.setdefault("x", a[0]))
    with torch.no_grad():
        model(calib)
    hook.remove()
    float_layer, fixed_layer = model.get_submodule(conv), corrected.get_submodule(conv)
    with torch.no_grad():
        wq = quantize_weight(fixed_layer.weight, per_channel=False)
        mean_float = float_layer(inputs["x"]).mean((0, 2, 3))
        mean_fixed = fixed_layer._conv_forward(inputs["x"], wq, fixed_layer.bias).mean((0, 2, 3))
        mean_plain = float_layer._conv_forward(inputs["x"], wq, float_layer.bias).mean((0, 2, 3))
    fp_noise = 1e-6 * float(mean_float.abs().max())  # float32 rounding of means of large activations
    torch.testing.assert_close(mean_plain - mean_float, before[conv], rtol=1e-3, atol=10 * fp_noise)
    assert (mean_fixed - mean_float).abs().max() < 10 * fp_noise < 0.01 * (mean_plain - mean_float).abs().max()
    # network level, on images the correction never saw: the mean logit shift shrinks
    with torch.no_grad():
        ref = model(held_out).mean(0)
        shift_plain = (_quantized_weights(model, False)(held_out).mean(0) - ref).abs().mean()
        shift_fixed = (_quantized_weights(corrected, False)(held_out).mean(0) - ref).abs().mean()
    assert shift_fixed < 0.8 * shift_plain  # measured 23.9 vs 37.7 (seeded)
