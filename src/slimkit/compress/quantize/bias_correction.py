"""Empirical bias correction (Nagel et al., 2019): remove the mean output shift that int8 weight rounding causes.

Quantizing W to Q(W) shifts each output channel's mean by E[conv(x; Q(W) - W)], a systematic error that
depthwise convs (few weights per channel) suffer most. On calibration images, slimkit measures that
shift for every conv/linear layer (using the float inputs the layer sees) and subtracts it from the
bias. The weight rounding modelled is ONNX Runtime's: symmetric int8 in [-127, 127], scale max|w|/127,
per output channel or per tensor. Batch norms are folded first, since ONNX weights are the folded ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.compress.quantize.fold import fold_batchnorm_

__all__ = ["quantize_weight", "weight_error_shift", "correct_bias_", "BiasCorrectionReport"]

log = logging.getLogger(__name__)


def quantize_weight(w: torch.Tensor, per_channel: bool = True, qmax: int = 127) -> torch.Tensor:
    """Symmetric int8 round trip of a weight tensor (dequantized back to float)."""
    if per_channel:
        scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12) / qmax
        scale = scale.view(-1, *([1] * (w.ndim - 1)))
    else:
        scale = w.detach().abs().max().clamp_min(1e-12) / qmax
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def _layer_delta(layer: nn.Module, x: torch.Tensor, delta_w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel mean of layer(x; delta_w) without bias: the output shift."""
    if isinstance(layer, nn.Conv2d):
        out = layer._conv_forward(x, delta_w, None)  # honours the layer's padding mode
        return out.transpose(0, 1).flatten(1).mean(1)
    out = F.linear(x, delta_w)
    return out.reshape(-1, out.shape[-1]).mean(0)


@dataclass
class BiasCorrectionReport:
    layers: int = 0
    shift_norm: dict[str, float] = field(default_factory=dict)  # |shift| per layer, before correction


@torch.no_grad()
def weight_error_shift(model: nn.Module, x: torch.Tensor, per_channel: bool = True, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """For each conv/linear layer: the mean output shift its int8 weight rounding causes on inputs `x`."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    deltas = {n: quantize_weight(m.weight, per_channel) - m.weight for n, m in layers.items()}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # samples seen per layer (a shared layer sees each image more than once)
    hooks = []
    for name, layer in layers.items():
        def hook(mod, inputs, _name=name):
            shift = _layer_delta(mod, inputs[0], deltas[_name]) * inputs[0].shape[0]
            sums[_name] = sums.get(_name, 0) + shift
            counts[_name] = counts.get(_name, 0) + inputs[0].shape[0]
        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        was_training = model.training
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return {n: s / counts[n] for n, s in sums.items()}


@torch.no_grad()
def correct_bias_(model: nn.Module, x: torch.Tensor, per_channel: bool = True, batch_size: int = 64) -> BiasCorrectionReport:
    """Fold batch norms, then subtract each layer's weight-rounding mean shift from its bias (in place)."""
    fold_batchnorm_(model)
    shifts = weight_error_shift(model, x, per_channel, batch_size)
    report = BiasCorrectionReport()
    for name, shift in shifts.items():
        layer = model.get_submodule(name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        layer.bias.sub_(shift.to(layer.bias.dtype))
        report.shift_norm[name] = float(shift.abs().mean())
    report.layers = len(shifts)
    log.info("bias-corrected %d layers", report.layers)
    return report
