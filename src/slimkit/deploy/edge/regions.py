"""Spatial geometry of one traced op: which input rows/columns an output region needs, and how to run
the op on a cropped region so that it computes exactly what the whole-map op computes there.

A region is (h0, h1, w0, w1), half-open, in the coordinates of a node's full output map. Windowed ops
(conv, pooling) are run with padding 0 on an input that is cropped to the window and padded only where
the window leaves the real map: that is where the whole-map op pads too, so the values are identical.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Window", "op_kind", "needed_input", "run_windowed", "Region"]

Region = tuple[int, int, int, int]

# Ops that act on each spatial position alone (per-channel affine, activations, elementwise arithmetic).
POINTWISE_MODULES = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.PReLU,
)
POINTWISE_FUNCTIONS = {
    operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul, torch.sub, torch.relu,
    torch.sigmoid, torch.tanh, F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.leaky_relu, F.mish,
}
POINTWISE_METHODS = {"add", "mul", "sub", "relu", "sigmoid", "tanh", "contiguous", "add_", "mul_", "relu_"}


@dataclass(frozen=True)
class Window:
    """A sliding window along both axes: kernel, stride, padding before the first element, dilation."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    fill: float = 0.0  # what the whole-map op pads with: 0 for conv/avg, -inf for max


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_window(m: nn.Conv2d) -> Window | None:
    if m.padding_mode != "zeros":
        return None  # reflect/replicate/circular padding reads real pixels across the border
    k, d = _pair(m.kernel_size), _pair(m.dilation)
    if m.padding == "valid":
        pad = (0, 0)
    elif m.padding == "same":  # PyTorch puts the odd extra pixel at the end, so the start gets total // 2
        pad = tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
    else:
        pad = _pair(m.padding)
    return Window(k, _pair(m.stride), pad, d)


def _pool_window(m: nn.Module) -> Window | None:
    if isinstance(m, nn.MaxPool2d):
        return Window(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), _pair(m.dilation),
                      fill=float("-inf"))
    # avg pool is exact on a zero-padded crop only when the padded zeros count in the divisor
    if isinstance(m, nn.AvgPool2d) and m.count_include_pad and not m.ceil_mode and m.divisor_override is None:
        return Window(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), (1, 1))
    return None


def _meta_kind(node) -> str | None:
    """'const' for weights and buffers read by functional code, 'check' for shape-free assertions (timm's
    `_assert(x.ndim == 4)`); both carry no spatial data."""
    if node.op == "get_attr":
        return "const"
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("ndim",):
        return "check"
    if node.op == "call_function" and node.target in (operator.eq, torch._assert):
        return "check"
    return None


def _functional_batch_norm(node) -> bool:
    # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...), as timm's BatchNormAct2d traces
    training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
    return node.op == "call_function" and node.target is F.batch_norm and training is False


def op_kind(node, modules: dict[str, nn.Module]) -> tuple[str, Window | None]:
    """('window', w), ('pointwise' | 'cat' | 'const' | 'check', None), or ('unsupported', None) for one fx node."""
    meta = _meta_kind(node)
    if meta:
        return meta, None
    if node.op == "call_function" and node.target is F.batch_norm:
        return ("pointwise", None) if _functional_batch_norm(node) else ("unsupported", None)
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Conv2d):
            w = _conv_window(m)
            return ("window", w) if w else ("unsupported", None)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            w = _pool_window(m)
            return ("window", w) if w else ("unsupported", None)
        if isinstance(m, POINTWISE_MODULES) and not (isinstance(m, nn.BatchNorm2d) and m.training):
            return "pointwise", None
        return "unsupported", None
    if node.op == "call_function" and node.target in POINTWISE_FUNCTIONS:
        return "pointwise", None
    if node.op == "call_method" and node.target in POINTWISE_METHODS:
        return "pointwise", None
    if node.op == "call_function" and node.target is torch.cat:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        return ("cat", None) if dim in (1, -3) else ("unsupported", None)
    return "unsupported", None


def _axis_need(o0: int, o1: int, k: int, s: int, p: int, d: int) -> tuple[int, int]:
    """Input index range [i0, i1) the outputs [o0, o1) read; it may stick out of the map (padding)."""
    return o0 * s - p, (o1 - 1) * s - p + d * (k - 1) + 1


def needed_input(w: Window, out: Region) -> Region:
    """The unclipped input region a window op reads to produce `out`."""
    h0, h1 = _axis_need(out[0], out[1], w.kernel[0], w.stride[0], w.pad[0], w.dilation[0])
    w0, w1 = _axis_need(out[2], out[3], w.kernel[1], w.stride[1], w.pad[1], w.dilation[1])
    return h0, h1, w0, w1


def clip(r: Region, height: int, width: int) -> Region:
    return max(r[0], 0), min(r[1], height), max(r[2], 0), min(r[3], width)


def windowed_callable(node, modules: dict[str, nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The op of a 'window' node with its padding removed (the caller pads explicitly)."""
    m = modules[node.target]
    if isinstance(m, nn.Conv2d):
        return lambda x: F.conv2d(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
    if isinstance(m, nn.MaxPool2d):
        return lambda x: F.max_pool2d(x, m.kernel_size, m.stride or m.kernel_size, 0, m.dilation)
    return lambda x: F.avg_pool2d(x, m.kernel_size, m.stride or m.kernel_size, 0)


def run_windowed(fn: Callable, x: torch.Tensor, pads: tuple[int, int, int, int], fill: float) -> torch.Tensor:
    """Pad `x` (top, bottom, left, right) where the window leaves the real map, then apply the op."""
    top, bottom, left, right = pads
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=fill)
    return fn(x)
