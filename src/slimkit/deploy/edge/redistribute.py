"""Receptive-field redistribution (MCUNetV2): a cheaper patch stage, with the receptive field moved later.

Every op in the patched head widens each tile's halo by its reach (kernel - 1) x dilation at its
resolution, so a patched head pays for large kernels and for depth. `redistribute()` returns a new model:

* in the head (everything up to the cut), convolutions larger than 3x3 become 3x3 (their central 3x3
  weights are kept, padding shrinks so the output size stays), and residual blocks (a module whose last op
  adds its own input back, with equal input and output shapes) become identities;
* in the tail, depthwise 3x3 convolutions that read a map of the cut's size become 5x5 with a zero
  border: the same function at first, and room for fine-tuning to take back the lost receptive field.

The head changes alter the function: fine-tune the result (benchmarks/edge_bench.py redistribute does).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from slimkit.deploy.edge.graph import Cut, Traced
from slimkit.deploy.edge.patch import Candidate, PatchConfig, patch_model
from slimkit.errors import BadInputError

__all__ = ["Redistribution", "redistribute", "redistribute_patched", "summary"]

_ADDS = (operator.add, operator.iadd, torch.add)


@dataclass
class Redistribution:
    """What changed: module paths, with their old and new kernels."""

    dropped_blocks: list[str] = field(default_factory=list)
    shrunk_kernels: dict[str, list[int]] = field(default_factory=dict)  # path -> old kernel (now 3x3)
    grown_kernels: dict[str, list[int]] = field(default_factory=dict)  # path -> old kernel (now +2)

    def to_dict(self) -> dict:
        return {"dropped_blocks": self.dropped_blocks, "shrunk_kernels": self.shrunk_kernels,
                "grown_kernels": self.grown_kernels}


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target in
                                                                    ("add", "add_"))


def _residual_blocks(t: Traced, cut: Cut) -> list[str]:
    """Outermost modules in the head whose nodes end in `input + f(input)` with equal shapes."""
    members: dict[str, list[int]] = {}
    for i, node in enumerate(t.nodes[: cut.index + 1]):
        for path in node.meta.get("nn_module_stack", {}) or {}:
            members.setdefault(path, []).append(i)
    found: list[str] = []
    for path in sorted(members, key=lambda p: p.count(".")):
        idx = members[path]
        if not path or any(path.startswith(f + ".") for f in found) or idx != list(range(idx[0], idx[-1] + 1)):
            continue
        last, inside = t.nodes[idx[-1]], {t.nodes[i] for i in idx}
        outside = {a for i in idx for a in t.nodes[i].all_input_nodes if a not in inside}
        if len(outside) == 1 and _is_add(last) and next(iter(outside)) in last.args:
            source = next(iter(outside))
            if t.shapes.get(source.name) == t.shapes.get(last.name) and idx[-1] < cut.index:
                found.append(path)
    return found


def _conv_nodes(t: Traced, nodes: list[fx.Node]) -> list[tuple[fx.Node, nn.Conv2d]]:
    modules = t.modules
    return [(n, modules[n.target]) for n in nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]


def _resized(conv: nn.Conv2d, kernel: tuple[int, int]) -> nn.Conv2d:
    """A copy of `conv` with another kernel: weights centre-cropped or zero-padded, output size kept."""
    old = conv.kernel_size
    pad = conv.padding if isinstance(conv.padding, str) else tuple(
        p + d * (k - o) // 2 for p, d, k, o in zip(conv.padding, conv.dilation, kernel, old))
    new = nn.Conv2d(conv.in_channels, conv.out_channels, kernel, conv.stride, pad, conv.dilation, conv.groups,
                    conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.zero_()
        dh, dw = (kernel[0] - old[0]) // 2, (kernel[1] - old[1]) // 2
        src = conv.weight[:, :, max(-dh, 0): old[0] - max(-dh, 0), max(-dw, 0): old[1] - max(-dw, 0)]
        new.weight[:, :, max(dh, 0): kernel[0] - max(dh, 0), max(dw, 0): kernel[1] - max(dw, 0)] = src
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new.train(conv.training)


def _shrinkable(conv: nn.Conv2d) -> bool:
    k, p = conv.kernel_size, conv.padding
    odd = all(v % 2 == 1 for v in k) and max(k) > 3
    return odd and (isinstance(p, str) or all(pp >= d * (kk - 3) // 2 for pp, d, kk in zip(p, conv.dilation, k)))


def redistribute(model: nn.Module, t: Traced, cut: Cut) -> tuple[nn.Module, Redistribution]:
    """A new model (`model` unchanged) with the head slimmed and the tail's receptive field grown; `t` traces `model`."""
    new, done = copy.deepcopy(model), Redistribution()
    done.dropped_blocks = _residual_blocks(t, cut)
    in_block = {n.name for n in t.nodes for p in (n.meta.get("nn_module_stack") or {}) if p in done.dropped_blocks}
    head = [n for n in t.nodes[: cut.index + 1] if n.name not in in_block]
    for node, conv in _conv_nodes(t, head):
        if _shrinkable(conv):
            done.shrunk_kernels[node.target] = list(conv.kernel_size)
            new.set_submodule(node.target, _resized(conv, (3, 3)))
    cut_hw = t.shapes[cut.node][2:]
    for node, conv in _conv_nodes(t, t.nodes[cut.index + 1:]):
        source = node.all_input_nodes[0]
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if depthwise and conv.kernel_size == (3, 3) and conv.padding_mode == "zeros" and \
                not isinstance(conv.padding, str) and t.shapes[source.name][2:] == cut_hw:
            done.grown_kernels[node.target] = list(conv.kernel_size)
            new.set_submodule(node.target, _resized(conv, (5, 5)))
    for path in done.dropped_blocks:
        new.set_submodule(path, nn.Identity())
    return new.eval(), done


def _module_label(model: nn.Module, cut: Cut) -> str:
    names = dict(model.named_modules())
    for label in cut.labels:
        if label in names:
            return label
    raise BadInputError(f"--redistribute: the cut {cut.label} is not the end of a named module (node names change "
                        "when blocks are dropped); pass --until MODULE")


def redistribute_patched(model: nn.Module, t: Traced, chosen: Candidate, size: tuple[int, int, int],
                         stream_input: bool = False):
    """The redistributed model (new) patched on the same grid after the same module: (new, patched, traced,
    chosen, changes)."""
    label = _module_label(model, chosen.plan.cut)
    new, changes = redistribute(model, t, chosen.plan.cut)
    cfg = PatchConfig(grid=tuple(chosen.plan.grid), until=label, stream_input=stream_input)
    patched, traced, chosen_new = patch_model(new, size, cfg)
    return new, patched, traced, chosen_new, changes


def summary(before: dict, after: dict, changes: Redistribution) -> dict:
    """The redistributed model's patch figures beside the unchanged model's (two measure_patch reports)."""
    keep = ("cut", "grid", "max_abs_diff", "output_max_abs", "arena_bytes", "lifetime_estimate_bytes", "macs")
    return {**changes.to_dict(), "unchanged": {k: before[k] for k in keep}, "redistributed": {k: after[k] for k in keep},
            "whole_macs_change": after["macs"]["before"] / before["macs"]["before"] - 1}
