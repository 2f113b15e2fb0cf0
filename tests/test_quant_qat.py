"""QAT: fake-quant in PyTorch, standard QDQ ONNX with int8 weights that ONNX Runtime runs, distillation."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from quant_helpers import SIZE, digits_tensors, torch_accuracy, trained, one_thread  # noqa: F401  (autouse)
from slimkit.compress.quantize.config import QATConfig
from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.ort_eval import accuracy, predict
from slimkit.compress.quantize.qat import ActFakeQuant, QuantLayer, export_qat_onnx, prepare_qat, qat_finetune, qat_loss


@pytest.mark.parametrize("mode", ["observed", "learned"])
def test_qat_exports_int8_qdq_that_matches_torch(tmp_path, mode):
    teacher = trained("plain")
    (x, y), (vx, vy) = digits_tensors()
    cfg = QATConfig(activation_range=mode, epochs=1, lr=5e-4, distill_alpha=0.5 if mode == "learned" else 0.0)
    model = prepare_qat(teacher, cfg)
    assert sum(isinstance(m, QuantLayer) for m in model.modules()) == 4
    history = qat_finetune(model, x, y, cfg, teacher=teacher)
    assert len(history) == 1 and np.isfinite(history[0])
    report = export_qat_onnx(model, SIZE, tmp_path / "qat.onnx")
    assert report.check.passed and report.check.max_abs_diff <= report.check.tolerance
    g = OnnxGraph(tmp_path / "qat.onnx")
    inits = {t.name: t for t in g.model.graph.initializer}
    weighted = [n for n in g.nodes if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 4
    for node in weighted:
        x_dq, w_dq = g.upstream(node.input[0]), g.upstream(node.input[1])
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        assert inits[w_dq.input[0]].data_type == onnx.TensorProto.INT8  # folded: weights stored as int8
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in inits for n in g.nodes)
    with torch.no_grad():
        torch_pred = model(vx).argmax(1).numpy()
    ort_pred = predict(tmp_path / "qat.onnx", vx.numpy()).argmax(1)
    assert (torch_pred == ort_pred).mean() >= 0.99
    assert torch_accuracy(teacher) - accuracy(tmp_path / "qat.onnx", vx.numpy(), vy.numpy()) <= 1.0


def test_observed_range_is_an_ema():
    fq = ActFakeQuant("observed", ema_decay=0.9).train()
    fq(torch.tensor([-1.0, 2.0]))
    fq(torch.tensor([0.0, 4.0]))
    assert float(fq.lo) == pytest.approx(0.9 * -1.0 + 0.1 * 0.0)
    assert float(fq.hi) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    scale, zp = fq.qparams()
    assert scale == pytest.approx((2.2 + 0.9) / 255) and zp == round(0.9 / scale)


def test_learned_range_gets_gradients_and_input_is_straight_through():
    fq = ActFakeQuant("learned").train()
    fq.observe(torch.tensor([0.0, 1.0]))  # range [0, 1], inputs non-negative: lo stays 0
    x = torch.tensor([0.25, 0.31, 3.0], requires_grad=True)
    out = fq(x)
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # clipped input gets no gradient
    assert fq.hi_param.grad.item() == pytest.approx(1.0)  # the clipped value moves with the upper bound
    torch.testing.assert_close(out.detach(), torch.tensor([64.0, 79.0, 255.0]) / 255)  # 63.75, 79.05, clipped


def test_qat_loss_mixes_cross_entropy_and_distillation():
    logits, teacher = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    target = torch.tensor([0])
    ce = F.cross_entropy(logits, target)
    assert qat_loss(logits, target, teacher, QATConfig(distill_alpha=0.0)) == ce
    cfg = QATConfig(distill_alpha=0.25, temperature=2.0)
    p_t = F.softmax(teacher / 2, 1)
    kd = (p_t * (p_t.log() - F.log_softmax(logits / 2, 1))).sum() * 4
    torch.testing.assert_close(qat_loss(logits, target, teacher, cfg), 0.75 * ce + 0.25 * kd)
