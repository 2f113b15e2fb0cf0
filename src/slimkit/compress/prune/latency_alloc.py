"""Allocation `latency-table`: per-layer widths chosen by the latency they save per unit of importance lost.

From the unpruned model, each step cuts one group down to a lower width timed in the model's per-layer
latency table (prune.layer_table): the move with the most predicted milliseconds saved per unit of importance
lost wins (a channel's importance: its score over its group's mean, as the global ranking counts it, times
the MACs it carries, so that where latency follows MACs the order is the global ranking's). Widths
come from the table's grid, so every chosen width is one the table measured (multiples of 8 or 16, where
the CPU kernels are fast). The steps make a path from the full model to the floor; a pruning level reads
as the fraction of the predicted whole-model latency removed, so every search over levels (MACs, params,
a fixed ratio) works on it, and a latency target is met by prediction and confirmed by measurement.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from slimkit.compress.prune.layer_table import LayerTable
from slimkit.compress.prune.structured import GroupPlan, Plan

__all__ = ["LatencyPath", "latency_path", "layer_widths_at", "resolve_table"]

log = logging.getLogger(__name__)


@dataclass
class LatencyPath:
    table: LayerTable
    points: list[tuple[list[int], float]]  # kept slots per group, predicted latency ratio (from 1.0 down)

    def index(self, ratio: float) -> int:
        """The first point on the path predicted at or below `ratio` (the last when none is)."""
        return next((i for i, p in enumerate(self.points) if p[1] <= ratio + 1e-12), len(self.points) - 1)

    def point(self, ratio: float) -> tuple[list[int], float]:
        return self.points[self.index(ratio)]

    def at(self, level: float) -> list[int]:
        """Kept slots for pruning `level` = fraction of the predicted whole-model latency removed."""
        return list(self.point(1.0 - level)[0])


def layer_widths_at(plan: Plan, keeps: list[int], table: LayerTable) -> dict[str, tuple[float, float]]:
    """(in, out) width of every table layer that `keeps` narrows."""
    from slimkit.compress.prune.structured import removed_channels

    removed = removed_channels(plan, keeps)
    return {n: (s["in"] - removed.get((n, "in"), 0.0), s["out"] - removed.get((n, "out"), 0.0))
            for n, s in table.layers.items() if removed.get((n, "in")) or removed.get((n, "out"))}


def _candidates(g: GroupPlan, table: LayerTable, round_to: int, max_layer_prune: float) -> list[int]:
    """Kept-slot counts a group may step down to, widest first: the table's grid on the group's root layer,
    or multiples of the rounding unit where the table has no line for it."""
    floor = max(1, math.ceil(g.size * (1.0 - max_layer_prune) - 1e-9))
    kind = "out" if g.out else "in"
    spec = table.layers.get(g.root)
    count = next((c for n, k, c in g.dims if n == g.root and k == kind), None)
    line = table.line(g.root, kind) if spec is not None and count == spec[kind] else []
    if len(line) > 1:
        slots = [c // g.ch_groups for c in line if c % g.ch_groups == 0 and (round_to <= 1 or c % round_to == 0)]
    else:
        unit = max(1, round_to // math.gcd(round_to, g.ch_groups)) if round_to > 1 else 1
        slots = list(range(unit, g.size, unit))
    return sorted({s for s in slots if floor <= s < g.size}, reverse=True)


def _importance_lost(g: GroupPlan, mean_cost: float) -> list[float]:
    """lost[r]: what cutting the r lowest-scored slots loses: each slot's score over the group mean, times the
    MACs it carries (over the mean group's). Where every layer's latency is proportional to its MACs, the
    best latency per loss is then the global ranking's order; the table moves the cut to where a MAC costs
    more time than elsewhere (small maps, memory-bound ops, widths off the kernels' blocking)."""
    weight = max(g.cost / mean_cost, 1e-3) if mean_cost > 0 else float(g.ch_groups)
    s = torch.sort(g.imp / g.imp.mean().clamp(min=1e-12)).values * weight
    return [0.0] + torch.cumsum(s, 0).tolist()


def _saved(table: LayerTable, g: GroupPlan, cur: int, new: int, removed: dict) -> float:
    """Predicted ms saved by cutting group g from `cur` to `new` slots, the other groups as they are."""
    extra: dict[tuple[str, str], float] = defaultdict(float)
    for name, kind, count in g.dims:
        if name in table.layers:
            extra[(name, kind)] += count * (cur - new) / g.size
    saved = 0.0
    for name in sorted({n for n, _ in extra}):
        s = table.layers[name]
        ci, co = s["in"] - removed[(name, "in")], s["out"] - removed[(name, "out")]
        saved += table.net_ms(name, ci, co) - table.net_ms(name, ci - extra[(name, "in")], co - extra[(name, "out")])
    return saved


def latency_path(plan: Plan, table: LayerTable, round_to: int, max_layer_prune: float) -> LatencyPath:
    """Greedy path from the full model to the floor, best latency saved per importance lost first."""
    groups = plan.groups
    keeps = [g.size for g in groups]
    cands = [_candidates(g, table, round_to, max_layer_prune) for g in groups]
    mean_cost = sum(g.cost for g in groups) / max(len(groups), 1)
    lost = [_importance_lost(g, mean_cost) for g in groups]
    removed: dict[tuple[str, str], float] = defaultdict(float)
    current = table.whole_ms
    points = [(list(keeps), 1.0)]
    while True:
        best = None
        for i, g in enumerate(groups):
            for k in (k for k in cands[i] if k < keeps[i]):
                saved = _saved(table, g, keeps[i], k, removed)
                score = saved / max(lost[i][g.size - k] - lost[i][g.size - keeps[i]], 1e-9)
                if saved > 0 and (best is None or score > best[0]):
                    best = (score, i, k, saved)
        if best is None:
            break
        _, i, k, saved = best
        for name, kind, count in groups[i].dims:
            removed[(name, kind)] += count * (keeps[i] - k) / groups[i].size
        keeps[i], current = k, current - saved
        points.append((list(keeps), current / table.whole_ms))
    log.info("latency path: %d steps, predicted latency ratio down to %.3f", len(points) - 1, points[-1][1])
    return LatencyPath(table, points)


def resolve_table(model, example_inputs, config, progress: bool = False) -> tuple[LayerTable, list[str]]:
    """The model's per-layer table: read from config.latency_table when that file exists (checked against
    this model, input and thread count), else timed now (and cached there when a path is given)."""
    path = config.latency_table
    if path and Path(path).exists():
        table = LayerTable.load(path)
        notes = table.check(model, example_inputs, config.latency_threads, where=f"latency table {path}")
        return table, notes + [f"per-layer latency table read from {path}"]
    table = _build(model, example_inputs, config, progress)
    if path:
        table.save(path)
    where = f"; saved to {path}" if path else ""
    return table, [f"per-layer latency table timed here ({len(table.entries)} ops, "
                   f"{table.conditions['threads']} thread(s)){where}"]


def _build(model, example_inputs, config, progress: bool) -> LayerTable:
    from contextlib import nullcontext

    from slimkit.compress.prune.layer_ops import prepare_layer_table, layer_specs, table_ops, DEFAULT_GRID

    grid = {**DEFAULT_GRID, "max_layer_prune": config.max_layer_prune}
    total = len(table_ops(layer_specs(model, example_inputs), grid)) + 2
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        ctx = Progress(console=Console(stderr=True), transient=True)  # the library never imports the CLI
    else:
        ctx = nullcontext()
    with ctx as bar:
        task = bar.add_task("latency table: export + verify ops", total=total) if bar else None
        tick = (lambda: bar.advance(task)) if bar else None
        prepared = prepare_layer_table(model, example_inputs, config.latency_threads, grid=grid, progress=tick)
    return prepared.time()
