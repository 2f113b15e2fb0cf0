"""Channel-safety analysis: which dependency groups Torch-Pruning can prune *correctly*.

Torch-Pruning maps channel indices through functional ops with heuristics: a reshape is an
identity or a flatten, anything unknown is element-wise, a split prunes each piece on its own.
Those guesses are wrong for a channel shuffle (a permutation), for `chunk` into equal halves
(pieces must shrink alike), for head-splitting reshapes of unknown attention, or for a mean
over channels; the pruned model then fails, or silently computes something else.

We record every op's input and output shapes while the graph is traced (a TorchFunctionMode,
keyed by the autograd node Torch-Pruning also sees), and mark an op *unsafe* unless the channel
axis provably survives it intact (same size, same leading extent), or it is a transpose/permute,
or a channel-major flatten. Groups that touch an unsafe op are frozen (left at full width).
Known-good owners (adapted attention, split-size adapters) are exempt.

`locate_failure` is the last line of defence: it runs a pruned model and names the innermost
non-torch.nn module whose forward raised, so the caller can protect it and retry.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from slimkit.compress.prune.axes import PERMUTES as _PERMUTES
from slimkit.compress.prune.axes import permute_verdict, reduces_channels

__all__ = ["OpRecord", "ShapeRecorder", "unsafe_nodes", "locate_failure", "tolerant_index_mapping", "unsupported_convs",
           "widest", "overflowed"]


@dataclass
class OpRecord:
    func: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    owner: nn.Module | None  # innermost module running when the op ran
    weight_transform: bool = False  # computed from its owner layer's own parameters alone


class ShapeRecorder(TorchFunctionMode):
    """Records (op, input shape, output shape, owner module) for each autograd node created."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.records: dict[Any, OpRecord] = {}
        self._weight_fns: set[Any] = set()  # autograd nodes of weight transforms
        self._stack: list[nn.Module] = []
        self._handles = []
        self._handles = _stack_hooks(model, self._stack)

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if tensors:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            owner = self._stack[-1] if self._stack else None
            weight = self._is_weight_transform(owner, tensors)
            for o in outs:
                if isinstance(o, torch.Tensor) and o.grad_fn is not None and o.grad_fn not in self.records:
                    name = getattr(func, "__name__", str(func))
                    # A broadcast with a scalar or per-channel factor (`scale * x`, StarReLU) keeps x's
                    # layout: the input of the output's shape is the one whose channels flow through.
                    source = next((t for t in tensors if t.shape == o.shape), tensors[0])
                    self.records[o.grad_fn] = OpRecord(name, tuple(source.shape), tuple(o.shape), owner, weight)
                    if weight:
                        self._weight_fns.add(o.grad_fn)
        return out

    def _is_weight_transform(self, owner: nn.Module | None, tensors: list[torch.Tensor]) -> bool:
        """An op of a conv / linear layer on its own parameters alone (ScaledStdConv2d standardises its
        weight through a (1, out, in*k*k) reshape and F.batch_norm in its forward): no activation
        channel flows through it, it only shapes the weight the layer then applies."""
        if not isinstance(owner, (nn.Linear, nn.modules.conv._ConvNd)):
            return False
        own = [p for p in owner._parameters.values() if p is not None]
        return all(any(t is p for p in own) or t.grad_fn in self._weight_fns for t in tensors)


_GUARDED_MAPPINGS = ("update_reshape_index_mapping", "update_concat_index_mapping", "update_expand_index_mapping",
                     "update_slice_index_mapping", "update_unbind_index_mapping")


@contextlib.contextmanager
def tolerant_index_mapping(failed: set | None = None, width: int | None = None,
                           max_deps: int | None = None) -> Iterator[set]:
    """Let Torch-Pruning skip ops whose index mapping it cannot compute (a channel shuffle divides
    by zero in its reshape mapping; a concat of inputs whose widths it cannot infer adds None in
    CoaT); the nodes it gave up on are collected in `failed` and are then treated as unsafe, so
    their groups stay whole. `width`: the widest axis of the model (`widest`); `max_deps`: the most
dependencies one group may collect; see _indexed_group_lookup."""
    from torch_pruning.dependency import index_mapping

    failed = set() if failed is None else failed
    originals = {name: getattr(index_mapping, name) for name in _GUARDED_MAPPINGS + ("update_split_index_mapping",)}

    def guard(original):
        def guarded(graph, node) -> None:
            try:
                original(graph, node)
            except (ZeroDivisionError, IndexError, TypeError, ValueError):
                failed.add(node.module)
        return guarded

    def split_in_piece_order(graph, node) -> None:
        sizes = getattr(node.module, "split_sizes", None)
        if sizes and all(isinstance(v, int) for v in sizes):  # its SplitPruner updates the sizes but not the offsets it maps with
            node.module.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        if _order_split_outputs(node):
            originals["update_split_index_mapping"](graph, node)
        else:
            failed.add(node.module)

    def slice_off_the_channels(graph, node) -> None:
        if getattr(node.module, "_slimkit_spatial", False):
            _clear_slice_mapping(node)
        else:
            guard(originals["update_slice_index_mapping"])(graph, node)

    for name in _GUARDED_MAPPINGS:
        setattr(index_mapping, name, guard(originals[name]))
    index_mapping.update_split_index_mapping = split_in_piece_order
    index_mapping.update_slice_index_mapping = slice_off_the_channels
    try:
        with _indexed_group_lookup(width, max_deps):
            yield failed
    finally:
        for name, fn in originals.items():
            setattr(index_mapping, name, fn)


def _clear_slice_mapping(node) -> None:
    """A slice along another axis than the channels passes channel indices unchanged. Torch-Pruning
    takes axis 1 of a 4-D tensor for the channels and maps indices by the slice bounds: on TinyViT's
    (B, H, W, C) map `x[:, :H]` it dropped every channel index >= H."""
    for dep in node.dependencies:
        dep.index_mapping[0] = None
    for source in node.inputs:
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = None


def _order_split_outputs(node) -> bool:
    """Torch-Pruning gives the i-th *consumer* of a split the i-th piece, but consumers are listed
    in graph-traversal order, not piece order (it pruned MixNet's kernel groups crosswise). Sort
    them by the piece each one reads (autograd's output_nr); False when that is ambiguous."""
    pieces = []
    for consumer in node.outputs:
        nrs = {nr for fn, nr in getattr(consumer.grad_fn, "next_functions", ()) if fn is node.grad_fn}
        if len(nrs) != 1:
            return False
        pieces.append(nrs.pop())
    if len(set(pieces)) != len(pieces):
        return False
    node.outputs[:] = [c for _, c in sorted(zip(pieces, node.outputs), key=lambda t: t[0])]
    return True


def widest(model: nn.Module) -> int:
    """The longest axis of any parameter of `model` (a bound on any channel count a group can have)."""
    return max((max(p.shape) for p in model.parameters() if p.dim()), default=1)


def overflowed(group) -> str | None:
    """The node where `group`'s channel indices outgrew every axis of the model, if they did."""
    return group.__dict__.get("_slimkit_overflow")


@contextlib.contextmanager
def _indexed_group_lookup(width: int | None = None, max_deps: int | None = None) -> Iterator[None]:
    """Same answers as Torch-Pruning's `Group.has_pruning_op`, from a hash set instead of a list
    scan: group expansion is quadratic without it (100 s -> seconds on MobileViT-v2). With `width`,
    indices more numerous than the model's widest axis stop there: flatten mappings around a loop of
    views multiplied them without end (EfficientViM's state-space mixer: 13.7M indices for 320
    channels, over 15 min in one group); the group is marked (`overflowed`) and kept whole. With
    `max_deps`, a group that collects more dependencies than that stops the same way: index lists that
    never repeat around a cycle of views grew DeepSeek-ViT's groups without end (22 GB, then the OOM killer)."""
    from torch_pruning.dependency.group import Group

    original_add, original_has = Group.add_dep, Group.has_pruning_op

    def add_dep(self, dep, idxs) -> None:
        original_add(self, dep, idxs)
        if width is not None and len(idxs) > width:
            self.__dict__.setdefault("_slimkit_overflow", dep.target.name or type(dep.target.module).__name__)
        self.__dict__.setdefault("_slimkit_ops", set()).add((id(dep.target), dep.handler, tuple(idxs)))
        self.__dict__["_slimkit_added"] = self.__dict__.get("_slimkit_added", 0) + 1

    def has_pruning_op(self, dep, idxs) -> bool:
        if max_deps is not None and len(self._group) > max_deps:
            self.__dict__.setdefault("_slimkit_overflow", dep.target.name or type(dep.target.module).__name__)
            return True
        if width is not None and len(idxs) > width:
            self.__dict__.setdefault("_slimkit_overflow", dep.target.name or type(dep.target.module).__name__)
            return True  # expand no further
        index = self.__dict__.get("_slimkit_ops")
        # Items added another way: scan. (Counted, not compared with the set's size: a target reached
        # twice before its first visit is added twice; the fallback then made DeepSeek-ViT's groups quadratic.)
        if index is None or self.__dict__.get("_slimkit_added", 0) < len(self._group):
            return original_has(self, dep, idxs)
        return (id(dep.target), dep.handler, tuple(idxs)) in index

    Group.add_dep, Group.has_pruning_op = add_dep, has_pruning_op
    try:
        yield
    finally:
        Group.add_dep, Group.has_pruning_op = original_add, original_has


def unsupported_convs(model: nn.Module) -> list[nn.Module]:
    """Grouped convs Torch-Pruning cannot shrink consistently: depthwise with a channel multiplier
    (groups == in_channels != out_channels), whose input and output channels are tied 1:k."""
    return [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)
            and m.groups > 1 and m.groups == m.in_channels and m.out_channels != m.in_channels]


def _stack_hooks(model: nn.Module, stack: list[nn.Module]) -> list:
    """Hooks keeping `stack` = the modules whose forward is running, innermost last."""

    def enter(mod, _inputs) -> None:
        stack.append(mod)

    def leave(mod, _inputs, _output) -> None:
        if stack:
            stack.pop()

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    return handles


def _prod(values) -> int:
    return math.prod(values) if values else 1


def _channel_axes(shape: tuple[int, ...], channels: int) -> list[int]:
    # axis 0 is the batch for activations; only a 1-D tensor (a parameter) has channels there
    axes = [a for a, s in enumerate(shape) if s == channels and (a > 0 or len(shape) == 1)]
    preferred = 1 if len(shape) in (4, 5) else len(shape) - 1
    return sorted(axes, key=lambda a: a != preferred)


def channel_preserved(rec: OpRecord, channels: int | None) -> bool:
    """True when channel c before the op is channel c after it (what Torch-Pruning assumes)."""
    if rec.in_shape == rec.out_shape:
        return True
    if rec.func in _PERMUTES:
        return True
    if not channels:
        return False
    for a in _channel_axes(rec.in_shape, channels):
        lead, trail = _prod(rec.in_shape[:a]), _prod(rec.in_shape[a + 1:])
        for b, size in enumerate(rec.out_shape):
            if size == channels and trail == _prod(rec.out_shape[b + 1:]):
                return True  # channel axis whole with the same inner extent: x[:, 0], (B,N,C)->(B,C)
            if _prod(rec.out_shape[:b]) != lead:
                continue
            if size == channels:
                return True  # channel axis whole at the same outer extent: pooling, (B,C,H,W)->(B,C,HW)
            tail = rec.in_shape[a:]
            if any(size == _prod(tail[:k]) for k in range(2, len(tail) + 1)):
                return True  # channel-major flatten: Torch-Pruning maps it with a stride
    return False


def unsafe_nodes(graph, records: dict[Any, OpRecord], exempt: set[nn.Module], sinks: list | None = None) -> list[Any]:
    """Op nodes of `graph` whose channel mapping Torch-Pruning would get wrong. Reductions over the
    channel axis (RMSNorm's mean of squares, CBAM-style mean/max gates) go to `sinks` instead: no
    channel flows through them, but the channels before them stay prunable (the statistic is then
    taken over the kept channels, as LayerNorm's is)."""
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer

    checked = {ops.OPTYPE.RESHAPE, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.SLICE, ops.OPTYPE.EXPAND,
               ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND}
    bad = []
    for module, node in graph.module2node.items():
        if node.type not in checked:
            continue
        rec = records.get(node.grad_fn) or _unrecorded_slice(node)
        if rec is not None and rec.owner is not None and rec.owner in exempt:
            continue
        if rec is not None and rec.weight_transform:
            if sinks is not None:
                sinks.append(module)  # cut: the layer's own pruner shapes its parameters
            continue
        if node.type in (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND):
            bad.append(module)  # pieces would be pruned independently of each other
            continue
        if rec is None:
            if node.type == ops.OPTYPE.SLICE:
                bad.append(module)  # a slice we could not see: its bounds may be stored sizes
            continue
        channels = _inferred_channels(graph, node, shape_infer)
        if node.type == ops.OPTYPE.SLICE:
            dim = getattr(node.grad_fn, "_saved_dim", None)
            axes = _channel_axes(rec.in_shape, channels) if channels else []
            if dim is None or not axes or dim % max(len(rec.in_shape), 1) in axes[:1]:
                bad.append(module)
            else:
                module._slimkit_spatial = True  # see _clear_slice_mapping
                _clear_slice_mapping(node)
            continue
        if sinks is not None and reduces_channels(rec, channels):
            sinks.append(module)
        elif not channel_preserved(rec, channels) or _moves_channels_off_layer_axis(node, rec, channels, records):
            bad.append(module)
    return bad


def _unrecorded_slice(node) -> OpRecord | None:
    """A slice autograd made inside one indexing call (`x[:, :H, :W]`: the first of two slices has no
    record of its own), read from its saved input sizes; None for anything else."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if type(node.grad_fn).__name__ != "SliceBackward0" or sizes is None:
        return None
    return OpRecord("slice", tuple(int(s) for s in sizes), (), None)


def _inferred_channels(graph, node, shape_infer) -> int | None:
    """Torch-Pruning's channel count into `node`; None where its inference fails (it indexes split
    sizes by consumer position, out of range in EfficientViM): the op is then judged without it."""
    if not node.inputs:
        return None
    try:
        return shape_infer.infer_out_channels_recursively(graph, node.inputs[0], [0])
    except (IndexError, TypeError, ValueError, ZeroDivisionError):
        return None


def _moves_channels_off_layer_axis(node, rec: OpRecord, channels: int | None, records: dict) -> bool:
    """A transpose that makes a layer read another axis than the channels (ResMLP / MLP-Mixer token
    mixing: (B, N, C) -> (B, C, N) -> Linear(N, N)): Torch-Pruning passes channel indices through
    any permute, and would hand C-channel indices to that Linear. Linears read the last axis, convs
    axis 1, of the tensor they consume; a Linear producer wrote its features on the last axis."""
    if rec.func not in _PERMUTES or len(rec.out_shape) < 3:
        return False
    verdict = permute_verdict(node, rec, channels, records)  # the axis followed to the layers, when it can be
    if verdict is not None:
        return verdict
    consumers = _nearest_layers(node, "outputs")
    # channels-last to channels-first before a conv (SAM's neck): the conv reads what the Linear wrote
    to_conv = any(isinstance(m, nn.modules.conv._ConvNd) and rec.out_shape[1] == m.in_channels for m in consumers)
    producers = _nearest_layers(node, "inputs")
    if not to_conv and any(isinstance(m, nn.Linear) and rec.in_shape[-1] == m.out_features
                           and rec.out_shape[-1] != m.out_features for m in producers):
        return True
    for m in consumers:
        if isinstance(m, nn.Linear) and channels and rec.out_shape[-1] != channels:
            return True
        if isinstance(m, nn.modules.conv._ConvNd) and channels and rec.out_shape[1] != channels:
            return True
    return False


_TORCH_NN = "torch.nn."


def locate_failure(model: nn.Module, example_inputs: torch.Tensor) -> tuple[nn.Module | None, str]:
    """Run `model`; on an exception return the innermost user-level module running, and the error."""
    stack: list[nn.Module] = []
    handles = _stack_hooks(model, stack)
    try:
        with torch.no_grad():
            model(example_inputs)
        return None, ""
    except Exception as exc:  # the model's own code raised: find whose forward it was
        for mod in reversed(stack):
            if not type(mod).__module__.startswith(_TORCH_NN.rstrip(".")) and mod is not model:
                return mod, f"{type(exc).__name__}: {exc}"
        return model, f"{type(exc).__name__}: {exc}"
    finally:
        for h in handles:
            h.remove()


def _nearest_layers(node, direction: str, depth: int = 4) -> list[nn.Module]:
    """The conv / linear layers reached from `node` along `direction` ("inputs" or "outputs") through
    at most `depth` layerless nodes (a Linear on a 3-D input shows as reshape -> mm -> reshape)."""
    found, frontier, seen = [], list(getattr(node, direction)), set()
    for _ in range(depth):
        following = []
        for n in frontier:
            if id(n) in seen:
                continue
            seen.add(id(n))
            if isinstance(n.module, (nn.Linear, nn.modules.conv._ConvNd)):
                found.append(n.module)
            elif not isinstance(n.module, nn.Module) or type(n.module).__module__.startswith("torch_pruning"):
                following.extend(getattr(n, direction))
        frontier = following
    return found


def index_out_of_range(graph, group) -> str | None:
    """Name of a layer the group would prune at channel indices it does not have, past its width or
    negative (a channel mapping gone wrong through an op the rules above let pass, e.g. DeepSeek-ViT's
    attention output); None when every index fits."""
    names = graph._module2name
    for dep, idxs in group:
        m = dep.target.module
        pruner = graph.get_pruner_of_module(m) if isinstance(m, nn.Module) else None
        if pruner is None or not idxs:
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        size = pruner.get_out_channels(m) if out else pruner.get_in_channels(m)
        if isinstance(size, int) and (max(int(i) for i in idxs) >= size or min(int(i) for i in idxs) < 0):
            return names.get(m, type(m).__name__)
    return None
