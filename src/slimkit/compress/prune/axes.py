"""Following the channel axis through layout ops to the layers that read it.

Torch-Pruning passes channel indices through any transpose or permute. That is right when the
layers after it read the axis the channels went to (CSATv2 and ConvNeXt-style blocks: (B, N, C)
-> (B, C, N) -> reshape to (B, C, H, W) -> ... -> flatten, transpose -> Linear), and wrong when
they read another axis (ResMLP / MLP-Mixer token mixing: (B, N, C) -> (B, C, N) -> Linear(N, N)).
`permute_verdict` tracks the axis from a permute's input through the recorded shapes of the ops
after it (permutes by their saved dims, element-wise ops, reshapes and reductions that keep the
axis whole at the same outer extent) up to the Linear (reads the last axis) or conv (axis 1)
layers that consume it. Where the trail is lost it gives no verdict, and the caller's own rule applies.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn

__all__ = ["PERMUTES", "REDUCTIONS", "permutation", "axis_after", "channel_readers", "permute_verdict", "reduces_channels"]

PERMUTES = ("permute", "transpose", "movedim", "swapaxes", "swapdims", "mT", "t")
REDUCTIONS = ("mean", "amax", "amin", "sum", "max", "min", "std", "var", "norm", "logsumexp")
RESIZES = ("pad", "interpolate")  # change the size of some axes, keep every axis in place
COPIES = ("CloneBackward0",)  # unrecorded autograd copies inside a recorded op: same shape, same layout
MAX_DEPTH = 10  # op nodes followed from the permute (a block's tail and the next block's head)
_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def _wrap(dim: Any, ndim: int) -> int:
    dim = int(dim)
    if dim >= 2**63:  # autograd saves negative dims as unsigned 64-bit
        dim -= 2**64
    return dim % ndim


def permutation(grad_fn: Any, ndim: int) -> list[int] | None:
    """out axis i = in axis perm[i], from a permute/transpose autograd node's saved dims."""
    dims = getattr(grad_fn, "_saved_dims", None)
    if dims is not None:
        return [_wrap(d, ndim) for d in dims]
    d0, d1 = getattr(grad_fn, "_saved_dim0", None), getattr(grad_fn, "_saved_dim1", None)
    if d0 is None or d1 is None:
        return [1, 0] if ndim == 2 and type(grad_fn).__name__.startswith("TBackward") else None
    perm = list(range(ndim))
    a, b = _wrap(d0, ndim), _wrap(d1, ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def axis_after(rec: Any, grad_fn: Any, axis: int) -> int | None:
    """Where input axis `axis` of a recorded op lands in its output; None when it does not survive whole."""
    if rec.func in PERMUTES:
        perm = permutation(grad_fn, len(rec.in_shape))
        return perm.index(axis) if perm is not None and len(perm) == len(rec.out_shape) else None
    if rec.in_shape == rec.out_shape:
        return axis
    if rec.func in RESIZES and len(rec.in_shape) == len(rec.out_shape) and rec.in_shape[axis] == rec.out_shape[axis]:
        return axis  # padding or resampling other axes (TinyViT pads its (B, H, W, C) map to whole windows)
    size, lead = rec.in_shape[axis], math.prod(rec.in_shape[:axis])
    for b, s in enumerate(rec.out_shape):
        if s == size and math.prod(rec.out_shape[:b]) == lead:
            return b
    return None


def channel_readers(node: Any, axis: int, shape: tuple[int, ...], records: dict) -> list[tuple[nn.Module, bool]] | None:
    """(layer, reads the tracked axis) for the layers consuming `node`'s output, whose `axis` holds
    the channels; None when the axis is lost on the way (an op without a record or that merges it)."""
    found: list[tuple[nn.Module, bool]] = []
    frontier, seen = [(n, axis, shape) for n in node.outputs], set()
    for _ in range(MAX_DEPTH):
        following = []
        for n, ax, shp in frontier:
            if id(n) in seen:
                continue
            seen.add(id(n))
            if isinstance(n.module, nn.Linear):
                found.append((n.module, ax == len(shp) - 1))
                continue
            if isinstance(n.module, _LAYERS):
                found.append((n.module, ax == 1))
                continue
            rec = records.get(n.grad_fn)
            if rec is None and type(n.grad_fn).__name__ in COPIES:  # reshape of a strided view: a copy, then the view
                following.extend((child, ax, shp) for child in n.outputs)
                continue
            linears = _linears_behind(n, records) if rec is None else None
            if linears:  # F.linear on a >2-D input: unrecorded views and a matmul in front of the layer
                found.extend((m, ax == len(shp) - 1) for m in linears)
                continue
            if rec is None or tuple(shp) != rec.in_shape:
                return None
            new = axis_after(rec, n.grad_fn, ax)
            if new is None:
                return None
            following.extend((child, new, rec.out_shape) for child in n.outputs)
        frontier = following
    return found or None


def _linears_behind(node: Any, records: dict, depth: int = 3) -> list[nn.Module] | None:
    """The Linear layers every path of unrecorded nodes from `node` reaches within `depth` (autograd's
    own views inside F.linear on a >2-D input); None when some path ends elsewhere."""
    if isinstance(node.module, nn.Linear):
        return [node.module]
    if depth == 0 or records.get(node.grad_fn) is not None or not node.outputs:
        return None
    found: list[nn.Module] = []
    for child in node.outputs:
        behind = _linears_behind(child, records, depth - 1)
        if behind is None:
            return None
        found.extend(behind)
    return found


def permute_verdict(node: Any, rec: Any, channels: int | None, records: dict) -> bool | None:
    """True when a layer after permute `node` reads another axis than the channels (unsafe), False
    when every layer reached reads them, None when that cannot be told (ambiguous or lost axis)."""
    if not channels:
        return None
    axes = [a for a, s in enumerate(rec.in_shape) if s == channels and a > 0]
    perm = permutation(node.grad_fn, len(rec.in_shape))
    if len(axes) != 1 or perm is None or len(perm) != len(rec.out_shape):
        return None
    readers = channel_readers(node, perm.index(axes[0]), rec.out_shape, records)
    if readers is None:
        return None
    return not all(ok for _, ok in readers)


def reduces_channels(rec: Any, channels: int | None) -> bool:
    """A statistic over the channel axis alone: (B, C, ...) -> (B, 1, ...) or (B, ...), every other
    axis kept (the channel axis: axis 1 of a 4-D/5-D map, else the last; the one of size `channels`)."""
    if rec.func not in REDUCTIONS or not channels or len(rec.in_shape) < 2:
        return False
    axis = 1 if len(rec.in_shape) in (4, 5) else len(rec.in_shape) - 1
    if rec.in_shape[axis] != channels or channels == 1:
        return False
    kept = rec.in_shape[:axis] + rec.in_shape[axis + 1:]
    return rec.out_shape in (kept, rec.in_shape[:axis] + (1,) + rec.in_shape[axis + 1:])
