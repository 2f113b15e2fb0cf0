"""Fold QuantizeLinear nodes that quantize constant weights into int8 initializers.

A fake-quant export computes Q(w) at run time from the float weight; ONNX Runtime's QDQ fusions
expect DequantizeLinear(int8 initializer) -> Conv/Gemm, which also stores the weight in 1 byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["fold_weight_quantize"]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next(a for a in node.attribute if a.name == "value")
            values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _quantize(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * w.ndim
    if scale.size > 1:
        shape[axis] = -1
    q = np.rint(w / scale.reshape(shape)) + zp.reshape(shape).astype(np.int64)  # rint: round half to even, like ONNX
    info = np.iinfo(zp.dtype)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def fold_weight_quantize(src: str | Path, dst: str | Path) -> int:
    """Rewrite `src` into `dst` with constant-weight QuantizeLinear nodes folded; returns how many."""
    model = onnx.load(str(src))
    graph = model.graph
    consts = _constants(graph)
    folded, drop = 0, []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not all(i in consts for i in node.input[:3]):
            continue
        if node.input[0] not in {t.name for t in graph.initializer}:
            continue  # only weights: activations that happen to be constant are left alone
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q = _quantize(consts[node.input[0]], consts[node.input[1]], consts[node.input[2]], axis)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        drop.append(node)
        folded += 1
    for node in drop:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return folded
