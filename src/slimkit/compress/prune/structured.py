"""Structured pruning on Torch-Pruning's dependency graph: plan once, apply at any level.

`plan_groups` scores every prunable dependency group of a model once (criterion, channel
grouping of grouped convs and attention heads, the cost of a channel in MACs and params).
`allocate` turns one scalar level into a kept-channel count per group (uniform, global
ranking, or cost-aware "adaptive" ranking), with rounding and a floor so no layer vanishes.
`apply_plan` prunes a model (usually a fresh copy) to those counts through a new dependency
graph, then lets the adapters fix module attributes.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from slimkit.compress.prune.adapters import ModelAdapters, analyse_model, clear_caches, fix_attributes, resize_fixed_filters
from slimkit.compress.prune.errors import operation
from slimkit.compress.prune.pruners import dependency_graph, prune_conv_extras
from slimkit.compress.prune.whole import frozen_reasons, group_reason
from slimkit.compress.prune.boundary import open_sides
from slimkit.compress.prune.safety import (ShapeRecorder, index_out_of_range, overflowed, tolerant_index_mapping, unsafe_nodes,
                                           unsupported_convs, widest)

__all__ = ["GroupPlan", "Plan", "plan_groups", "allocate", "apply_plan", "layer_stats", "removed_channels", "hooked_forward"]

log = logging.getLogger(__name__)


@dataclass
class GroupPlan:
    """One dependency group: its root, scores of its `size` channel slots, and who loses them."""

    root: str
    out: bool  # root pruned on its output (True) or input (attention: the projection's input)
    ch_groups: int  # a slot stands for this many channels (grouped conv groups, attention heads)
    size: int
    imp: torch.Tensor
    dims: list[tuple[str, str, int]]  # (module, "in" | "out", channels of that dim in this group)
    cost: float = 0.0  # MACs per slot

    @property
    def channels(self) -> int:
        return self.size * self.ch_groups


@dataclass
class Plan:
    groups: list[GroupPlan]
    frozen_notes: list[str] = field(default_factory=list)
    whole: dict[str, str] = field(default_factory=dict)  # layer of a group left out -> why (names a module)


_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def cut_graph(model: nn.Module, example_inputs: torch.Tensor, exempt: set[nn.Module]):
    """(graph, op records, unsafe op nodes): the dependency graph with propagation stopped at unsafe
    ops, ops whose index mapping failed, and channel reductions. Planning and the cut build the same
    graph, so a group expands alike in both (EVA: a concat unmapped at planning crashed the cut)."""
    with operation("building the dependency graph"), torch.enable_grad(), ShapeRecorder(model) as recorder, \
            tolerant_index_mapping() as unmapped:
        graph = dependency_graph(model, example_inputs)
    sinks: list = []
    unsafe = unsafe_nodes(graph, recorder.records, exempt, sinks) + sorted(unmapped, key=id)
    for module in unsafe + sinks:
        graph.module2node[module].dependencies = []  # propagation stops here
    return graph, recorder.records, unsafe


def _exempt(adapters: ModelAdapters) -> set[nn.Module]:
    exempt: set[nn.Module] = set()
    for owner in adapters.attention + adapters.split_owners:
        exempt.update(owner.modules())
    return exempt


class _GroupScorer:
    """Torch-Pruning's dependency graph plus the bookkeeping its BasePruner does (channel groups of
    grouped convs and attention heads, attention roots), with unsafe ops cut *before* groups are
    expanded, so groups stop at them instead of exploding through a shuffle."""

    def __init__(self, model, example_inputs, importance, ignored_layers, num_heads, exempt) -> None:
        self.DG, self.records, self.unsafe = cut_graph(model, example_inputs, exempt)
        self.importance = importance
        self.num_heads = dict(num_heads)
        self.ignored = [m for layer in ignored_layers for m in layer.modules()]
        self.width = widest(model)
        # a group holds each (node, in/out) dependency a few times at most (attention, concat); far beyond
        # that it is cycling through index lists that never repeat
        self.max_deps = 8 * len(self.DG.module2node) + 64
        self.out_groups, self.in_groups = self._channel_groups(model)

    def _channel_groups(self, model: nn.Module) -> tuple[dict, dict]:
        out_groups, in_groups = {}, {}
        for m in model.modules():
            pruner = self.DG.get_pruner_of_module(m)
            if pruner is None or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels):
                continue
            if pruner.get_in_channel_groups(m) > 1:
                in_groups[m] = pruner.get_in_channel_groups(m)
            if pruner.get_out_channel_groups(m) > 1:
                out_groups[m] = pruner.get_out_channel_groups(m)
        out_groups.update(self.num_heads)
        return out_groups, in_groups

    def groups(self) -> list:
        with operation("expanding dependency groups"), tolerant_index_mapping(width=self.width, max_deps=self.max_deps):
            return list(self.DG.get_all_groups(ignored_layers=self.ignored, root_module_types=_ROOT_TYPES))

    def channel_groups(self, group) -> int:
        found = [1]
        for dep, _ in group:
            table = self.out_groups if self.DG.is_out_channel_pruning_fn(dep.handler) else self.in_groups
            found.append(table.get(dep.target.module, 1))
        return max(found)

    def attention_root(self, group):
        """Attention groups are rooted at the projection's input (as Torch-Pruning does): the qkv
        output is three stacked copies of the heads, the projection input one."""
        is_attn = any(dep.target.module in self.num_heads and self.DG.is_out_channel_pruning_fn(dep.handler)
                      for dep, _ in group)
        if not is_attn:
            return group
        for dep, idxs in group:
            if isinstance(dep.target.module, _ROOT_TYPES) and self.DG.is_in_channel_pruning_fn(dep.handler):
                with tolerant_index_mapping(width=self.width, max_deps=self.max_deps):
                    return self.DG.get_pruning_group(dep.target.module, dep.handler, idxs)
        return None


def _ignored(model: nn.Module, ignore: list[str]) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n and any(n == p or n.startswith(p + ".") for p in ignore)]


def _frozen_objects(model: nn.Module, adapters: ModelAdapters, ignore: list[str]) -> set[int]:
    frozen: set[int] = set()
    for root in list(adapters.protected) + _ignored(model, ignore):
        frozen.update(id(m) for m in root.modules())
        frozen.update(id(p) for p in root.parameters())
    return frozen


def _touches(group, frozen: set[int], graph, open_: set[tuple[int, bool]]) -> bool:
    """Whether the group prunes a frozen object, other than on an open side of a protected module."""
    for dep, _ in group:
        for obj, fn in ((dep.target.module, dep.handler), (dep.source.module, dep.trigger)):
            if id(obj) in frozen and (id(obj), graph.is_out_channel_pruning_fn(fn)) not in open_:
                return True
    return False


def plan_groups(model, example_inputs, importance, classifier: list[nn.Module], ignore: list[str],
                adapters: ModelAdapters | None = None) -> Plan:
    """Score every prunable group of `model` (unchanged); frozen and unsafe groups are left out."""
    adapters = adapters or analyse_model(model)
    scorer = _GroupScorer(model, example_inputs, importance, classifier, adapters.num_heads, _exempt(adapters))
    frozen = _frozen_objects(model, adapters, ignore)
    unsafe = scorer.unsafe
    frozen.update(id(m) for m in unsafe)
    frozen.update(id(m) for m in unsupported_convs(model))
    reasons = frozen_reasons(model, adapters.protected, ignore, unsafe, scorer.DG, scorer.records, unsupported_convs(model))
    ignored = set(_ignored(model, ignore))
    open_ = open_sides(scorer.DG, scorer.records, [m for m in adapters.protected if m not in ignored])
    stats = layer_stats(model, example_inputs)
    groups, names, score_notes, whole = [], scorer.DG._module2name, [], {}
    for group in scorer.groups():
        if overflowed(group) is not None:
            for dep, _ in group:
                if dep.target.module in names:
                    whole.setdefault(names[dep.target.module], f"its channel indices multiply without end at {overflowed(group)}")
            continue
        if _touches(group, frozen, scorer.DG, open_):
            reason = group_reason(group, reasons) or "kept whole"
            for dep, _ in group:
                if dep.target.module in names:
                    whole.setdefault(names[dep.target.module], reason)
            continue
        group = scorer.attention_root(group)
        if group is None:
            continue
        misfit = index_out_of_range(scorer.DG, group)
        if misfit is not None:  # indices beyond a layer's width: the mapping is wrong, keep the group whole
            score_notes.append(f"{misfit}: channel indices mapped beyond its width; its group is kept whole")
            for dep, _ in group:
                if dep.target.module in names:
                    whole.setdefault(names[dep.target.module], f"channel indices mapped beyond the width of {misfit}")
            continue
        with operation("scoring channel groups"):
            plan = _score_group(scorer, group, names, stats, score_notes)
        if plan is not None:
            groups.append(plan)
    clear_caches(model)
    notes = list(adapters.notes) + score_notes
    if unsafe:
        notes.append(f"{len(unsafe)} op(s) with channel mappings Torch-Pruning cannot follow: their groups kept")
    return Plan(groups, notes, whole)


def _scoring_problem(notes: list[str], root: str, message: str) -> None:
    """A group the criterion could not score as asked: said in the result's notes and the log, never silently."""
    notes.append(f"{root}: {message}")
    log.warning("pruning group %s: %s", root, message)


def _score_group(scorer, group, names, stats, notes: list[str]) -> GroupPlan | None:
    ch_groups = scorer.channel_groups(group)
    imp = scorer.importance(group)
    root = names.get(group[0].dep.target.module, "?")
    if imp is None:
        _scoring_problem(notes, root, "the criterion gave no scores for this group; it is left unpruned")
        return None
    if len(imp) % ch_groups:
        _scoring_problem(notes, root, f"{len(imp)} scores do not split into {ch_groups} channel groups; left unpruned")
        return None
    imp = imp.detach().float().cpu()
    imp = imp.view(ch_groups, -1).mean(0) if ch_groups > 1 else imp
    bad = ~torch.isfinite(imp)
    if bad.all():
        _scoring_problem(notes, root, "every score is NaN or infinite; the group is left unpruned")
        return None
    if bad.any():
        # A failed score must not make a channel look least important: it ranks with the group's best.
        _scoring_problem(notes, root, f"{int(bad.sum())} of {len(imp)} scores are NaN or infinite; those channels rank with the group's best")
        imp = torch.where(bad, imp[~bad].max(), imp)
    root_dep = group[0].dep
    dims = []
    for dep, idxs in group:
        name = names.get(dep.target.module) if isinstance(dep.target.module, nn.Module) else None
        if name is None or name not in stats:
            continue
        kind = "out" if scorer.DG.is_out_channel_pruning_fn(dep.handler) else "in"
        dims.append((name, kind, len(idxs)))
    size = len(imp)
    plan = GroupPlan(names[root_dep.target.module], scorer.DG.is_out_channel_pruning_fn(root_dep.handler),
                     ch_groups, size, imp, dims)
    plan.cost = sum(_dim_cost(stats[n], kind, count) for n, kind, count in dims) / max(size, 1)
    return plan


def _dim_cost(stat: dict, kind: str, count: int) -> float:
    total = stat["out"] if kind == "out" else stat["in"]
    if not total or (stat["depthwise"] and kind == "in"):
        return 0.0
    return stat["macs"] * count / total


def layer_stats(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, dict]:
    """MACs and channel counts of every conv / linear / norm layer (one forward with hooks)."""
    stats: dict[str, dict] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(m, inp, out):
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(m, nn.modules.conv._ConvNd):
            per_out = (m.in_channels // m.groups) * math.prod(m.kernel_size)
            macs = out.numel() // out.shape[0] * per_out
            rec = {"in": m.in_channels, "out": m.out_channels, "depthwise": m.groups == m.in_channels == m.out_channels and m.groups > 1}
        elif isinstance(m, nn.Linear):
            macs = out.numel() // out.shape[0] * m.in_features
            rec = {"in": m.in_features, "out": m.out_features, "depthwise": False}
        else:
            width = m.weight.shape[0] if getattr(m, "weight", None) is not None else 0
            macs, rec = 0, {"in": width, "out": width, "depthwise": True}
        rec["macs"] = stats.get(names[m], {}).get("macs", 0) + macs
        rec["params"] = sum(p.numel() for p in m.parameters(recurse=False))
        stats[names[m]] = rec

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    hooked_forward(model, example_inputs, kinds, hook)
    return stats


def hooked_forward(model: nn.Module, example_inputs: torch.Tensor, kinds: tuple, hook) -> None:
    """One batch-1 forward without gradients, `hook` on every module of `kinds` (removed after; caches cleared)."""
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(example_inputs[:1])
    finally:
        for h in handles:
            h.remove()
    clear_caches(model)


def allocate(plan: Plan, level: float, mode: str, round_to: int, max_layer_prune: float) -> list[int]:
    """Kept slots per group for pruning `level` (fraction of prunable channels removed)."""
    groups = plan.groups
    if not groups:
        return []
    if mode == "uniform":
        keeps = [g.size * (1.0 - level) for g in groups]
    else:
        keeps = _ranked_keeps(groups, level, cost_aware=(mode == "adaptive"))
    return [_round_keep(g, k, round_to, max_layer_prune) for g, k in zip(groups, keeps)]


def removed_channels(plan: Plan, keeps: list[int]) -> dict[tuple[str, str], float]:
    """Channels each layer dimension (name, "in" | "out") loses when group i keeps keeps[i] slots."""
    removed: dict[tuple[str, str], float] = defaultdict(float)
    for g, keep in zip(plan.groups, keeps):
        frac = (g.size - keep) / g.size
        for name, kind, count in g.dims:
            removed[(name, kind)] += count * frac
    return removed


def _ranked_keeps(groups: list[GroupPlan], level: float, cost_aware: bool) -> list[float]:
    mean_cost = sum(g.cost for g in groups) / len(groups) or 1.0
    scores, weights, owner = [], [], []
    for i, g in enumerate(groups):
        s = g.imp / g.imp.mean().clamp(min=1e-12)
        if cost_aware:
            s = s / max(g.cost / mean_cost, 1e-6)  # expensive channels go first
        scores.append(s)
        weights.append(torch.full_like(s, float(g.ch_groups)))
        owner.append(torch.full((len(s),), i, dtype=torch.long))
    s, w, o = torch.cat(scores), torch.cat(weights), torch.cat(owner)
    order = torch.argsort(s, stable=True)
    cum = torch.cumsum(w[order], 0) / w.sum()
    n_cut = int(torch.searchsorted(cum, torch.tensor(level), right=True))
    cut = torch.zeros(len(s), dtype=torch.bool)
    cut[order[:n_cut]] = True
    return [float(g.size - int(cut[o == i].sum())) for i, g in enumerate(groups)]


def _round_keep(g: GroupPlan, keep: float, round_to: int, max_layer_prune: float) -> int:
    floor = max(1, math.ceil(g.size * (1.0 - max_layer_prune) - 1e-9))
    unit = max(1, round_to // math.gcd(round_to, g.ch_groups)) if round_to > 1 else 1
    keep = max(keep, floor)
    if unit > 1 and g.size > unit:
        keep = max(unit, int(round(keep / unit)) * unit)
        if keep >= g.size:
            keep = g.size
    return int(min(g.size, max(1, round(keep))))


def apply_plan(model: nn.Module, example_inputs: torch.Tensor, plan: Plan, keeps: list[int]) -> nn.Module:
    """Prune `model` in place so group i keeps keeps[i] slots (highest scores survive)."""
    adapters = analyse_model(model)
    dg = cut_graph(model, example_inputs, _exempt(adapters))[0]
    with torch.enable_grad(), tolerant_index_mapping(width=widest(model)), operation("pruning channel groups"):
        _prune_groups(model, dg, plan, keeps)
    with operation("updating module attributes"):
        fix_attributes(model, adapters)
    with operation("resizing fixed depthwise filters"):
        resize_fixed_filters(model, example_inputs, adapters)
    return model


def _prune_groups(model: nn.Module, dg, plan: Plan, keeps: list[int]) -> None:
    for g, keep in zip(plan.groups, keeps):
        n_prune = g.size - keep
        module = model.get_submodule(g.root)
        pruner = dg.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if g.out else pruner.prune_in_channels
        order = torch.argsort(g.imp, stable=True).tolist()
        while n_prune > 0:
            idxs = sorted(i + k * g.size for k in range(g.ch_groups) for i in order[:n_prune])
            group = dg.get_pruning_group(module, fn, idxs)
            if dg.check_pruning_group(group):  # False when some dependent layer would lose every channel
                prune_conv_extras(group)
                group.prune()
                break
            log.debug("group %s: %d slots would empty a dependent layer; trying %d", g.root, n_prune, n_prune // 2)
            n_prune //= 2
