"""slimkit's dependency graph: Torch-Pruning's, with layer pruners fixed for blocks it gets wrong.

Every graph slimkit builds comes from `dependency_graph`, so a rule added here holds for planning,
for the search's trial copies and for the final cut alike:

- GroupNorm without bias (`nn.GroupNorm(..., bias=False)`, timm `GroupNorm1` in PoolFormer-v2 and
  other MetaFormers): Torch-Pruning prunes `bias` unconditionally and fails on None.
- concat / split whose input (piece) widths Torch-Pruning could not infer (a None among its `concat_sizes`; EVA's
  DINOv3 rotary attention): its pruner only keeps those sizes for later index mapping, and added
  None to an int; the bookkeeping is skipped, as Torch-Pruning does when no size is known at all.
- convs with per-output-channel parameters of their own besides weight and bias (timm `ScaledStdConv2d`
  in NF-Nets: a `gain` of shape (out, 1, 1, 1)): `prune_conv_extras` prunes those with the output
  channels, and moves a scaled weight standardisation's `scale` (gamma / sqrt(fan-in), fixed at
  construction) to the new fan-in, so the pruned layer is the one its class builds at the kept width.
  Torch-Pruning's own conv pruner does the rest: the criteria recognise its handlers by identity.
"""

from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.pruner import function

__all__ = ["dependency_graph", "prune_conv_extras", "GroupNormPruner", "ConcatPruner", "SplitPruner"]


class GroupNormPruner(function.GroupNormPruner):
    """Prunes a GroupNorm's channels and whichever of its affine parameters exist."""

    def prune_out_channels(self, layer, idxs):
        keep = sorted(set(range(layer.num_channels)) - set(int(i) for i in idxs))
        layer.num_channels = len(keep)
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if param is not None:
                setattr(layer, name, self._prune_parameter_and_grad(param, keep, 0))
        return layer

    prune_in_channels = prune_out_channels


def _skipping_unknown_sizes(base: type, sizes: str) -> type:
    """`base` (Torch-Pruning's concat or split pruner), doing nothing when a piece width is None."""

    class Pruner(base):
        def prune_out_channels(self, layer, idxs):
            known = getattr(layer, sizes)
            if known is not None and any(size is None for size in known):
                return None
            return super().prune_out_channels(layer, idxs)

        prune_in_channels = prune_out_channels

    Pruner.__name__ = Pruner.__qualname__ = base.__name__
    return Pruner


ConcatPruner = _skipping_unknown_sizes(ops.ConcatPruner, "concat_sizes")
SplitPruner = _skipping_unknown_sizes(ops.SplitPruner, "split_sizes")


_REPLACED = {ops.OPTYPE.GN: GroupNormPruner(), ops.OPTYPE.CONCAT: ConcatPruner(), ops.OPTYPE.SPLIT: SplitPruner()}


def dependency_graph(model: torch.nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's DependencyGraph of `model` traced on `example_inputs`, with slimkit's pruners."""
    dg = tp.DependencyGraph()
    dg.REGISTERED_PRUNERS.update(_REPLACED)
    pruners = [p for p in list(dg.REGISTERED_PRUNERS.values()) + list(dg.CUSTOMIZED_PRUNERS.values()) if p is not None]
    dg._in_channel_pruning_fn = {p.prune_in_channels for p in pruners}  # Torch-Pruning's own handler caches
    dg._out_channel_pruning_fn = {p.prune_out_channels for p in pruners}
    # forward_fn: left to itself, Torch-Pruning first tries model(*example_inputs), which unpacks a batch of
    # one into an unbatched sample; convs accept it, so the graph (and the shapes recorded alongside) lost the batch axis
    dg.build_dependency(model, example_inputs=example_inputs, forward_fn=_forward, verbose=False)
    _parameter_axes(dg)
    return dg


def _parameter_axes(dg: tp.DependencyGraph) -> None:
    """Torch-Pruning prunes a parameter used outside any layer on its last non-singleton axis: right
    for a (C,) scale or a (1, N, C) token embedding, wrong for Visformer's (1, C, H, W) position
    embedding (it cut the width). Such a parameter is pruned on the one axis whose size is the
    channel count of the activations it is combined with, when its axis does not have that size."""
    from torch_pruning.dependency import shape_infer

    for node in dg.module2node.values():
        if node.type != ops.OPTYPE.PARAMETER:
            continue
        widths = set()
        for op in node.outputs:
            for other in op.inputs:
                if other is not node:
                    try:
                        widths.add(shape_infer.infer_out_channels_recursively(dg, other, [0]))
                    except (IndexError, TypeError, ValueError, ZeroDivisionError):
                        widths.add(None)
        shape = node.module.shape
        if len(widths) != 1 or None in widths or node.pruning_dim is None:
            continue
        channels = widths.pop()
        axes = [a for a, size in enumerate(shape) if size == channels]
        if shape[node.pruning_dim] != channels and len(axes) == 1:
            node.pruning_dim = axes[0]


def _forward(model: torch.nn.Module, example_inputs):
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def prune_conv_extras(group) -> None:
    """Before `group.prune()`: the per-output-channel parameters a conv holds besides weight and bias
    follow its pruned outputs; a scaled weight standardisation (a float `scale` and a `gain`) keeps
    scale = gamma / sqrt(fan-in) for its pruned inputs."""
    for dep, idxs in group:
        layer = dep.target.module
        if not isinstance(layer, torch.nn.modules.conv._ConvNd) or not idxs:
            continue
        drop = {int(i) for i in idxs}
        if dep.handler == function.prune_conv_out_channels:
            width = layer.out_channels
            keep = [i for i in range(width) if i not in drop]
            for name, param in list(layer._parameters.items()):
                if name not in ("weight", "bias") and param is not None and param.dim() >= 1 and param.shape[0] == width:
                    layer._parameters[name] = torch.nn.Parameter(param.data[keep].clone(), requires_grad=param.requires_grad)
        elif dep.handler == function.prune_conv_in_channels and layer.groups == 1:
            if isinstance(getattr(layer, "scale", None), float) and "gain" in layer._parameters:
                layer.scale *= math.sqrt(layer.in_channels / (layer.in_channels - len(drop)))
