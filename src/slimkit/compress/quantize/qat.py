"""Quantization-aware training in PyTorch with fake-quant, exported to standard ONNX QDQ that ONNX Runtime runs.

Every Conv2d / Linear becomes a `QuantLayer`: its input goes through an activation fake-quant (uint8,
asymmetric, per tensor; range observed by EMA or learned by gradient through the clipping bounds, as in
PACT) and its weight through a per-channel symmetric int8 fake-quant (scale max|w|/127, the same rounding
ONNX Runtime's static quantizer uses; max|w|/64 for 7-bit weights on x86 without VNNI, see int8_format). Gradients pass the rounding straight through. Batch norms are
folded first, so the weights being trained are the ones that get quantized.
Optional distillation ("Model compression via distillation and quantization", Polino et al. 2018): the
float model is the teacher and the loss mixes cross-entropy with a temperature-softened KL term.
Export: torch's fake-quant ops become QuantizeLinear/DequantizeLinear; the weight QuantizeLinear nodes
are then folded into int8 initializers (see qdq_fold), giving the DQ(int8 weight) -> Conv form ORT fuses.

`qat_finetune` trains through slimkit.engine.fit; the distillation term is the project's shared softened KL
(slimkit.compress.distill.kd_divergence), as in logit KD and pruning.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.compress.quantize.config import QATConfig
from slimkit.compress.quantize.fold import fold_batchnorm_

__all__ = ["ActFakeQuant", "QuantLayer", "prepare_qat", "calibrate_qat_", "qat_loss", "qat_finetune", "export_qat_onnx",
           "QAT_ATOL"]

log = logging.getLogger(__name__)
QAT_ATOL = 0.02  # QDQ parity: ORT's int arithmetic may round a value one step apart from torch's float path


class ActFakeQuant(nn.Module):
    """uint8 asymmetric per-tensor fake-quant with an observed (EMA) or learned range."""

    def __init__(self, mode: str = "learned", ema_decay: float = 0.9):
        super().__init__()
        self.mode, self.ema_decay = mode, ema_decay
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("nonneg", torch.tensor(False))  # inputs never negative (after ReLU): keep lo = 0
        self.lo_param = nn.Parameter(torch.tensor(0.0)) if mode == "learned" else None
        self.hi_param = nn.Parameter(torch.tensor(1.0)) if mode == "learned" else None
        self.enabled = True

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
        if not bool(self.initialized):
            self.lo.copy_(lo), self.hi.copy_(hi), self.nonneg.fill_(bool(x.min() >= 0))
            self.initialized.fill_(True)
        else:
            d = self.ema_decay
            self.lo.mul_(d).add_((1 - d) * lo), self.hi.mul_(d).add_((1 - d) * hi)
            self.nonneg.logical_and_(x.min() >= 0)
        if self.lo_param is not None:
            self.lo_param.copy_(self.lo), self.hi_param.copy_(self.hi)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = (self.lo_param, self.hi_param) if self.lo_param is not None else (self.lo, self.hi)
        lo = torch.zeros_like(lo) if bool(self.nonneg) else torch.clamp(lo, max=0.0)
        return lo, torch.maximum(hi, lo + 1e-6)

    def qparams(self) -> tuple[float, int]:
        lo, hi = (float(v) for v in self.bounds())
        scale = (hi - lo) / 255.0
        return scale, int(min(255, max(0, round(-lo / scale))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized) or (self.training and self.mode == "observed"):
            self.observe(x.detach())
        if not self.enabled:
            return x
        if not self.training:
            scale, zp = self.qparams()
            return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
        lo, hi = self.bounds()
        scale = (hi - lo) / 255.0
        zp = torch.round(-lo / scale).clamp(0, 255).detach()
        xc = torch.minimum(torch.maximum(x, -zp * scale), (255 - zp) * scale)  # grads reach lo/hi where clipped
        xq = (torch.clamp(torch.round(xc / scale) + zp, 0, 255) - zp) * scale
        return xc + (xq - xc).detach()


class QuantLayer(nn.Module):
    """A Conv2d/Linear whose input and weight are fake-quantized."""

    def __init__(self, layer: nn.Module, config: QATConfig, qmax: int = 127):
        super().__init__()
        self.layer = layer
        self.act = ActFakeQuant(config.activation_range, config.ema_decay)
        self.qmax = qmax  # 127 (s8) or 64 (s7: no int16 saturation on x86 without VNNI)
        self.register_buffer("w_scale", None)  # frozen per-channel scale for export

    def weight_scale(self) -> torch.Tensor:
        if self.w_scale is not None and not self.training:
            return self.w_scale
        return (self.layer.weight.detach().abs().flatten(1).amax(1) / self.qmax).clamp_min(1e-12).float()

    def freeze_(self) -> None:
        self.w_scale = self.weight_scale().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        w = self.layer.weight
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        # The scale maps max|w| to qmax, so values stay in [-qmax, qmax]; the int8 bounds are the only ones
        # torch's ONNX exporter accepts.
        wq = torch.fake_quantize_per_channel_affine(w, self.weight_scale(), zero, 0, -128, 127)
        if self.training:
            wq = w + (wq - w).detach()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, wq, self.layer.bias)
        return F.linear(x, wq, self.layer.bias)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def prepare_qat(model: nn.Module, config: QATConfig | None = None) -> nn.Module:
    """A new model with batch norms folded and every Conv2d/Linear wrapped in a QuantLayer."""
    from slimkit.compress.quantize.int8_format import choose_format

    config = config or QATConfig()
    qmax = choose_format(config.target_cpu, config.weight_format).qmax
    qmodel = copy.deepcopy(model).eval()
    for _, bn_name in fold_batchnorm_(qmodel):
        bn = qmodel.get_submodule(bn_name)
        # A folded BN in train mode would renormalise with batch statistics; timm's BatchNormAct keeps its act.
        _replace(qmodel, bn_name, getattr(bn, "act", None) or nn.Identity())
    targets = [n for n, m in qmodel.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for name in targets:
        _replace(qmodel, name, QuantLayer(qmodel.get_submodule(name), config, qmax))
    return qmodel


@torch.no_grad()
def calibrate_qat_(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> None:
    """Initialise activation ranges from float activations on `x` (model changed in place)."""
    acts = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    for a in acts:
        a.enabled, a.mode_saved, a.mode = False, a.mode, "observed"
    was = model.training
    model.train()  # observers update in train mode; nothing else trains here
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    model.train(was)
    for a in acts:
        a.enabled, a.mode = True, a.mode_saved


def qat_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None, config: QATConfig) -> torch.Tensor:
    """Cross-entropy, mixed with temperature-softened KL to the teacher when distillation is on."""
    from slimkit.compress.distill.base import kd_divergence

    ce = F.cross_entropy(logits, target)
    if teacher_logits is None or config.distill_alpha == 0.0:
        return ce
    kd = kd_divergence(logits, teacher_logits, config.temperature)
    return (1 - config.distill_alpha) * ce + config.distill_alpha * kd


def qat_finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: QATConfig | None = None,
                 teacher: nn.Module | None = None, seed: int = 0) -> list[float]:
    """Fine-tune a prepared QAT model in place (distilling from `teacher` if given); mean loss per epoch."""
    from slimkit.compress.distill import SelfDistill
    from slimkit.engine import TrainConfig, device_of, fit

    config = config or QATConfig()
    if any(isinstance(m, ActFakeQuant) and not bool(m.initialized) for m in model.modules()):
        calibrate_qat_(model, x[: 4 * config.batch_size])
    if config.epochs == 0:
        return []
    loss = None
    if teacher is not None and config.distill_alpha > 0:  # a frozen copy: the caller's float model stays as it is
        loss = SelfDistill(teacher, temperature=config.temperature, alpha=config.distill_alpha)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=0.0,
                        schedule="constant", seed=seed, device=device_of(model))
    result = fit(model, (x, y), train, loss_fn=loss, progress=False)
    return [record["train_loss"] for record in result.history]


def export_qat_onnx(model: nn.Module, input_size: Sequence[int], path: str | os.PathLike, opset: int = 17,
                    fmt=None, check_inputs: torch.Tensor | None = None):
    """Export a QAT model to QDQ ONNX with int8 weights, verified against the PyTorch fake-quant model.

    Two checks: ONNX Runtime's int8 ops against exact int32 arithmetic (int8_check, on `check_inputs` or
    random images), then the whole output against PyTorch's float fake-quant within QAT_ATOL. `fmt`: the
    WeightFormat the model was prepared with (default: the one for this machine). The report's `check`
    is the float comparison; `int8_check` the exact one.
    """
    from slimkit.compress.quantize.int8_check import enforce_exact, int8_exact_check
    from slimkit.compress.quantize.int8_format import choose_format
    from slimkit.compress.quantize.qdq_fold import fold_weight_quantize
    from slimkit.deploy.onnx_export import export_onnx, verify_onnx

    model.eval()
    for m in model.modules():
        if isinstance(m, QuantLayer):
            m.freeze_()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.qdq.onnx")
    try:
        report = export_onnx(model, input_size, tmp, opset=opset, atol=QAT_ATOL)
        fold_weight_quantize(tmp, tmp)
        x = check_inputs[:8] if check_inputs is not None else torch.randn(2, *input_size,
                                                                           generator=torch.Generator().manual_seed(0))
        exact = int8_exact_check(tmp, x.float().cpu().numpy())
        warning = enforce_exact(exact, fmt or choose_format())
        # Where only this machine saturates (building for another target), the float comparison cannot pass here.
        report.check = verify_onnx(model, tmp, input_size, atol=QAT_ATOL, raise_on_fail=warning is None)
        report.int8_check = {**exact.to_dict(), "warning": warning}
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    report.path, report.size_bytes = str(path), path.stat().st_size
    return report
