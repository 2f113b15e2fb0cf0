"""Count MACs, elementwise work and activation lifetimes in one eager run, at the aten level.

A TorchDispatchMode sees every aten op the model runs (functional code included),
and forward hooks keep a stack of the modules being executed, so each op is
attributed to the innermost module that ran it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from slimkit.profile.handlers import MAC_HANDLERS, op_category

__all__ = ["MacCount", "count_macs", "CountingMode"]

# Ops that only move or re-describe data: neither MACs nor elementwise compute.
_DATA_MOVEMENT = {
    "_to_copy", "copy_", "clone", "contiguous", "cat", "stack", "constant_pad_nd", "index", "index_select",
    "gather", "lift_fresh", "detach", "alias", "empty", "empty_like", "empty_strided", "zeros", "zeros_like",
    "ones", "ones_like", "full", "full_like", "arange", "new_empty", "new_zeros", "new_ones", "new_full",
    "scalar_tensor", "_local_scalar_dense", "repeat", "roll", "flip", "split_with_sizes", "unbind", "fill_",
    "zero_", "masked_fill", "masked_fill_", "where", "select_scatter", "slice_scatter", "pad", "reflection_pad2d",
    "replication_pad2d", "_unsafe_view", "unfold", "im2col", "col2im", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle", "split", "expand", "permute", "t", "transpose", "view",
    "reshape", "squeeze", "unsqueeze", "select", "slice", "as_strided", "_reshape_alias", "set_", "resize_",
}


@dataclass
class MacCount:
    """The result of one counted forward pass."""

    total: int = 0
    by_module: dict[str, int] = field(default_factory=dict)  # inclusive: a module and everything inside it
    self_by_module: dict[str, int] = field(default_factory=dict)  # ops whose innermost module is this one
    by_category: dict[str, int] = field(default_factory=dict)  # conv / linear / matmul / attention
    by_op: dict[str, int] = field(default_factory=dict)  # aten op name -> MACs
    elementwise: dict[str, int] = field(default_factory=dict)  # aten op name -> output elements
    module_calls: dict[str, int] = field(default_factory=dict)
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    module_types: dict[str, str] = field(default_factory=dict)
    peak_activation_bytes: int = 0  # estimated from execution order and tensor lifetimes
    activation_timeline: list[int] = field(default_factory=list)  # live bytes after each op

    @property
    def elementwise_total(self) -> int:
        return sum(self.elementwise.values())


class _Lifetimes:
    """Tracks activation allocations: created by an op, alive until the last op that reads them."""

    def __init__(self) -> None:
        self.alloc_of: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.sizes: list[int] = []
        self.born: list[int] = []
        self.last_use: list[int] = []

    def add(self, tensor: torch.Tensor, step: int) -> None:
        self.alloc_of[tensor] = len(self.sizes)
        self.sizes.append(tensor.untyped_storage().nbytes())
        self.born.append(step)
        self.last_use.append(step)

    def touch(self, tensor: torch.Tensor, step: int) -> int | None:
        alloc = self.alloc_of.get(tensor)
        if alloc is not None:
            self.last_use[alloc] = step
        return alloc

    def alias(self, tensor: torch.Tensor, alloc: int, step: int) -> None:
        self.alloc_of[tensor] = alloc
        self.last_use[alloc] = step

    def timeline(self, steps: int) -> list[int]:
        delta = [0] * (steps + 2)
        for size, born, last in zip(self.sizes, self.born, self.last_use):
            delta[born] += size
            delta[last + 1] -= size
        live, out = 0, []
        for d in delta[: steps + 1]:
            live += d
            out.append(live)
        return out


class CountingMode(TorchDispatchMode):
    """Dispatch mode that attributes every op's MACs to the module stack active when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.result = MacCount()
        self.life = _Lifetimes()
        self.step = 0
        self._inclusive: dict[str, int] = defaultdict(int)
        self._self: dict[str, int] = defaultdict(int)
        self._category: dict[str, int] = defaultdict(int)
        self._by_op: dict[str, int] = defaultdict(int)
        self._elementwise: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.step += 1
        name = func.overloadpacket.__name__
        handler = MAC_HANDLERS.get(func.overloadpacket)
        if handler is not None:
            self._record_macs(func.overloadpacket, name, int(handler(args, kwargs, out)))
        elif not func.is_view and name not in _DATA_MOVEMENT:
            first = next((t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)), None)
            if first is not None:
                self._elementwise[name] += first.numel()
        self._track_lifetimes(func, args, kwargs, out)
        return out

    def _record_macs(self, packet: Any, name: str, macs: int) -> None:
        category = op_category(packet)
        owner = self.stack[-1] if self.stack else ""
        if category == "matmul" and self.result.module_types.get(owner, "").endswith(".Linear"):
            category = "linear"
        self._category[category] += macs
        self._by_op[name] += macs
        self._self[owner] += macs
        for module in set(self.stack) | {""}:
            self._inclusive[module] += macs

    def _track_lifetimes(self, func, args, kwargs, out) -> None:
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        allocs = [self.life.touch(t, self.step) for t in inputs]
        source = next((a for a in allocs if a is not None), None)
        mutates = func._schema.is_mutable
        for t in (t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)):
            if (func.is_view or mutates) and source is not None:
                self.life.alias(t, source, self.step)
            elif func.is_view:
                continue  # a view of a weight or constant (e.g. Linear's transposed weight) is no activation
            elif t not in self.life.alloc_of:
                self.life.add(t, self.step)

    def finish(self, outputs: Any) -> MacCount:
        for t in (t for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor)):
            self.life.touch(t, self.step)  # the outputs live to the end
        r = self.result
        r.by_module, r.self_by_module = dict(self._inclusive), dict(self._self)
        r.by_category, r.by_op, r.elementwise = dict(self._category), dict(self._by_op), dict(self._elementwise)
        r.total = self._inclusive.get("", 0)
        r.activation_timeline = self.life.timeline(self.step)
        r.peak_activation_bytes = max(r.activation_timeline, default=0)
        return r


@contextlib.contextmanager
def _module_hooks(model: nn.Module, mode: CountingMode) -> Iterator[None]:
    handles = []
    for qualname, module in model.named_modules():
        mode.result.module_types[qualname] = f"{type(module).__module__}.{type(module).__qualname__}"

        def pre(mod, inputs, _name=qualname):
            mode.stack.append(_name)
            mode.result.module_calls[_name] = mode.result.module_calls.get(_name, 0) + 1

        def post(mod, inputs, output, _name=qualname):
            if mode.stack and mode.stack[-1] == _name:
                mode.stack.pop()
            first = next((t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)), None)
            if first is not None:
                mode.result.output_shapes[_name] = list(first.shape)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def count_macs(model: nn.Module, example: torch.Tensor | tuple | list | dict) -> MacCount:
    """Run `model` once on `example` (unchanged model, no grad) and count its MACs exactly."""
    mode = CountingMode()
    with torch.no_grad(), _module_hooks(model, mode):
        with mode:
            for t in tree_flatten(example)[0]:
                if isinstance(t, torch.Tensor):
                    mode.life.add(t, 0)
            if isinstance(example, dict):
                out = model(**example)
            elif isinstance(example, (tuple, list)):
                out = model(*example)
            else:
                out = model(example)
        return mode.finish(out)
