"""MAC formulas per aten op. One multiply-accumulate counts once (torchvision's `_ops` convention).

Counting happens below autograd, at the aten level, so functional code, modules
called twice, einsum (which lowers to bmm) and fused kernels are all seen. The
fused attention kernels and nn.MultiheadAttention's fast path are opaque single
ops there; their formulas below count the matmuls they perform inside.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

__all__ = ["MAC_HANDLERS", "register_mac_handler", "op_category"]

aten = torch.ops.aten
Handler = Callable[[tuple, dict, Any], int]
MAC_HANDLERS: dict[Any, Handler] = {}
_CATEGORY: dict[Any, str] = {}


def register_mac_handler(*ops: Any, category: str) -> Callable[[Handler], Handler]:
    """Register `fn(args, kwargs, out) -> MACs` for aten op packets; users may add their own."""

    def deco(fn: Handler) -> Handler:
        for op in ops:
            MAC_HANDLERS[op] = fn
            _CATEGORY[op] = category
        return fn

    return deco


def op_category(op: Any) -> str:
    return _CATEGORY.get(op, "other")


def _ops(*names: str) -> list[Any]:
    """aten op packets by name, skipping any this torch build lacks."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


@register_mac_handler(*_ops("convolution", "_convolution", "mkldnn_convolution", "convolution_overrideable"), category="conv")
def conv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    per_element = weight.shape[1] * math.prod(weight.shape[2:])
    # Plain conv: every output element sums Cin/groups * k taps. Transposed conv scatters
    # every input element into Cout/groups * k outputs, which is weight.shape[1] for it.
    return (x.numel() if transposed else out.numel()) * per_element


@register_mac_handler(*_ops("mm"), category="matmul")
def mm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


@register_mac_handler(*_ops("addmm", "_addmm_activation"), category="matmul")
def addmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    return mm_macs(args[1:], kwargs, out)


@register_mac_handler(*_ops("bmm"), category="matmul")
def bmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


@register_mac_handler(*_ops("baddbmm", "addbmm"), category="matmul")
def baddbmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    return bmm_macs(args[1:], kwargs, out)


@register_mac_handler(*_ops("mv", "addmv"), category="matmul")
def mv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    mat = args[1] if args[0].dim() == 1 and len(args) > 2 else args[0]
    return mat.shape[0] * mat.shape[1]


@register_mac_handler(*_ops("dot", "vdot"), category="matmul")
def dot_macs(args: tuple, kwargs: dict, out: Any) -> int:
    return args[0].numel()


@register_mac_handler(
    *_ops(
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    ),
    category="attention",
)
def sdpa_macs(args: tuple, kwargs: dict, out: Any) -> int:
    q, k, v = args[0], args[1], args[2]
    rows = math.prod(q.shape[:-1])  # batch * heads * L query positions
    keys = k.shape[-2]
    return rows * keys * q.shape[-1] + rows * keys * v.shape[-1]  # Q @ K^T, then P @ V


def _mha_core_macs(batch: int, q_len: int, kv_len: int, embed: int) -> int:
    projections = batch * embed * embed * (q_len + 2 * kv_len)  # q, k, v in-projections
    attention = 2 * batch * q_len * kv_len * embed  # QK^T and PV summed over all heads
    out_proj = batch * q_len * embed * embed
    return projections + attention + out_proj


def _batch_len(t: torch.Tensor) -> tuple[int, int]:
    return (1, t.shape[0]) if t.dim() == 2 else (t.shape[0], t.shape[1])


@register_mac_handler(*_ops("_native_multi_head_attention"), category="attention")
def native_mha_macs(args: tuple, kwargs: dict, out: Any) -> int:
    query, key, embed = args[0], args[1], int(args[3])
    batch, q_len = _batch_len(query)
    _, kv_len = _batch_len(key)
    return _mha_core_macs(batch, q_len, kv_len, embed)


@register_mac_handler(*_ops("_transformer_encoder_layer_fwd"), category="attention")
def encoder_layer_macs(args: tuple, kwargs: dict, out: Any) -> int:
    src, embed = args[0], int(args[1])
    ffn_w1 = args[14]
    batch, length = _batch_len(src)
    hidden = ffn_w1.shape[0]
    return _mha_core_macs(batch, length, length, embed) + 2 * batch * length * embed * hidden
