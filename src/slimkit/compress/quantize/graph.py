"""A read-only view of an ONNX graph for quantization decisions: producers, consumers, weights, MACs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

__all__ = ["OnnxGraph", "LayerInfo", "WEIGHTED_OPS"]

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerInfo:
    """A weighted node (conv / linear): what quantization touches and what it costs."""

    name: str
    op_type: str
    weight_shape: tuple[int, ...]
    macs: int  # multiply-accumulates per image
    depthwise: bool


def _infer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The model with inferred shapes, or the model unchanged and why inference failed (logged at WARNING).

    Without shapes a layer's MACs fall back to its weight count, so size-based choices
    (the speed guard's tiny layers) work on a rougher figure: the caller records the reason.
    """
    try:
        return onnx.shape_inference.infer_shapes(model), None
    except Exception as exc:  # onnx raises several types (protobuf size, inference errors)
        reason = f"ONNX shape inference failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); " \
                 "layer MACs are counted as weight sizes"
    log.warning("%s", reason)
    return model, reason


class OnnxGraph:
    def __init__(self, model: onnx.ModelProto | str | Path):
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        model, self.shape_error = _infer_shapes(model)
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.initializers = {t.name: tuple(t.dims) for t in graph.initializer}
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.shapes = {
            vi.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            for vi in [*graph.value_info, *graph.output, *graph.input]
        }

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def weight_shape(self, node: onnx.NodeProto) -> tuple[int, ...] | None:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            return None
        return self.initializers.get(node.input[1])

    def layers(self) -> list[LayerInfo]:
        """Weighted nodes with a constant weight, in graph order."""
        out = []
        for node in self.nodes:
            shape = self.weight_shape(node)
            if shape is None:
                continue
            group = int(self.attr(node, "group", 1) or 1)
            depthwise = node.op_type == "Conv" and group > 1 and shape[1] == 1 and group == shape[0]
            out.append(LayerInfo(node.name, node.op_type, shape, self._macs(node, shape), depthwise))
        return out

    def _macs(self, node: onnx.NodeProto, wshape: tuple[int, ...]) -> int:
        numel = int(np.prod(wshape))
        oshape = self.shapes.get(node.output[0], ())
        if node.op_type.startswith("Conv"):
            spatial = [d for d in oshape[2:] if d > 0]
            return numel * int(np.prod(spatial)) if len(spatial) == len(oshape[2:]) and spatial else numel
        if node.op_type == "MatMul":
            rows = [d for d in oshape[1:-1] if d > 0]
            return numel * int(np.prod(rows)) if rows else numel
        return numel

    def upstream(self, tensor: str) -> onnx.NodeProto | None:
        return self.producer.get(tensor)

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])
