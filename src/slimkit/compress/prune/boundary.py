"""The outer sides of a protected module: pruned with the streams around it, its inside kept whole.

A protected attention (window partitions with relative position biases, query pooling, blocked
halo attention, per-head biases) keeps its internal widths: heads, head dims, the query/key/value
split. But the layers that read its input (the first projections, and a norm before them) and the
layer that writes its output (the output projection) only touch the stream outside: their input
(resp. output) channels can be pruned with that stream, as any layer's can (TinyViT, Hiera-SAM2,
HaloNet). `open_sides` finds those sides on the dependency graph: a layer inside the module whose
input reaches a node outside it through channel-preserving steps only (element-wise ops, norms,
autograd's own views of F.linear) may lose input channels; one whose output leaves that way may
lose output channels. Everything else inside stays frozen. A module that reads its input width
into its own reshapes (DaViT's `C // num_heads`) breaks when that width shrinks: the pruner's
repair step then protects it whole, as before.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["open_sides"]

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
MAX_STEPS = 6  # nodes walked from a layer to the module's edge (a norm, F.linear's views, a dropout)


def open_sides(graph, records: dict, protected: list[nn.Module]) -> set[tuple[int, bool]]:
    """(id(module), prunes outputs) pairs inside `protected` that prune only channels outside them."""
    allowed: set[tuple[int, bool]] = set()
    for root in protected:
        inside = {id(m) for m in root.modules()}
        for m in root.modules():
            node = graph.module2node.get(m)
            if node is None or not isinstance(m, _LAYERS):
                continue
            reached = _edge(node, "inputs", inside, records)
            if reached is not None:
                allowed.add((id(m), False))
                allowed.update((id(n), side) for n in reached for side in (False, True))
            if _edge(node, "outputs", inside, records) is not None:
                allowed.add((id(m), True))
    return allowed


def _edge(node: Any, direction: str, inside: set[int], records: dict) -> list[nn.Module] | None:
    """The norms passed on every path from `node` along `direction` to a node outside the module;
    None when some path meets a layer, a shape-changing op or a parameter of the module first."""
    passed: list[nn.Module] = []
    frontier, seen = list(getattr(node, direction)), set()
    for _ in range(MAX_STEPS):
        following = []
        for n in frontier:
            if id(n) in seen:
                continue
            seen.add(id(n))
            verdict = _step(n, inside, records)
            if verdict is False:
                return None
            if verdict is None:  # still inside: keep walking
                if isinstance(n.module, nn.Module) and id(n.module) in inside:
                    passed.append(n.module)
                following.extend(getattr(n, direction))
        if not following:
            return passed
        frontier = following
    return None


def _step(n: Any, inside: set[int], records: dict) -> bool | None:
    """True: `n` is outside the module; False: a step that is not channel-preserving inside it;
    None: a channel-preserving step inside it (or an unrecorded autograd view)."""
    m = n.module
    if isinstance(m, nn.Module) and not type(m).__module__.startswith("torch_pruning"):
        if id(m) not in inside:
            return True
        return None if not isinstance(m, _LAYERS) and next(m.children(), None) is None else False
    if not isinstance(m, nn.Module):  # an unwrapped parameter
        return False
    rec = records.get(n.grad_fn)
    if rec is None:
        return None
    if rec.owner is None or id(rec.owner) not in inside:
        return True
    return None if rec.in_shape == rec.out_shape and not rec.weight_transform else False
