"""Activation memory plan of a schedule, the way an MCU runtime lays out its arena: a tensor lives from
the op that makes it to the last op that reads it; the arena must hold the largest live set.

Sizes are elements per image; bytes follow as elements x bytes per element (1 for int8, 4 for fp32).
Padding is assumed to happen inside the kernels, and a single-input pointwise op (BatchNorm, activation)
writes over its input when nothing else reads that input, as MCU runtimes fuse conv-BN-activation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod

from slimkit.deploy.edge.graph import Traced
from slimkit.deploy.edge.plan import PatchPlan, area, conv_macs_per_position

__all__ = ["PlanRow", "MemoryPlan", "whole_plan", "patched_plan", "patched_extra_macs"]


@dataclass
class PlanRow:
    node: str
    target: str
    patched: bool
    out_shape: list[int]  # C, H, W of the largest piece this node writes (one patch's region when patched)
    out_elements: int
    live_elements: int  # every tensor in the arena while this node runs (largest over patches)


@dataclass
class MemoryPlan:
    rows: list[PlanRow]

    @property
    def arena_elements(self) -> int:
        return max((r.live_elements for r in self.rows), default=0)

    def to_dict(self) -> dict:
        return {"arena_elements": self.arena_elements, "arena_bytes_int8": self.arena_elements,
                "arena_bytes_fp32": 4 * self.arena_elements, "layers": [asdict(r) for r in self.rows]}


def _timeline(seq: list[tuple[str, int, list[str]]], resident: int, live: dict[str, int],
              fusable: set[str] = frozenset()) -> list[tuple[str, int, int]]:
    """(name, out size, live size) per op; `live` holds tensors alive at the start, `resident` never frees."""
    last = {s: i for i, (_, _, ins) in enumerate(seq) for s in ins}
    live, rows = dict(live), []
    for i, (name, size, ins) in enumerate(seq):
        if name in fusable and len(ins) == 1 and last.get(ins[0]) == i and live.get(ins[0]) == size:
            live.pop(ins[0])  # computed in place over its only input
        live[name] = size
        rows.append((name, size, resident + sum(live.values())))
        for s in [*ins, name]:
            if last.get(s, i) <= i:
                live.pop(s, None)
    return rows


def _elements(shape: tuple[int, ...]) -> int:
    return prod(shape[1:]) if len(shape) > 1 else 1


def _fusable(t: Traced) -> set[str]:
    return {name for name, (kind, _) in t.kinds.items() if kind == "pointwise"}


def _rows_for(t: Traced, nodes, live: dict[str, int], resident: int = 0) -> list[PlanRow]:
    seq = [(n.name, _elements(t.shapes.get(n.name, (1,))), [a.name for a in n.all_input_nodes]) for n in nodes]
    targets = {n.name: str(n.target) for n in nodes}
    return [PlanRow(name, targets[name], False, list(t.shapes.get(name, (1,))[1:]), size, lv)
            for name, size, lv in _timeline(seq, resident, live, _fusable(t))]


def whole_plan(t: Traced) -> MemoryPlan:
    """The unpatched network, op after op, the input counted until its last reader."""
    first = t.nodes[0]
    return MemoryPlan(_rows_for(t, t.nodes[1:], {first.name: _elements(t.shapes[first.name])}))


def patched_plan(t: Traced, plan: PatchPlan, stream_input: bool = False) -> MemoryPlan:
    """Head patch by patch (the stitched cut map stays resident), then the tail whole.

    The whole input stays resident too, unless `stream_input`: then each patch loads only its own input
    region (from a camera line buffer or flash), which lives until its last reader.
    """
    cut, first = t.nodes[plan.cut.index], t.nodes[0].name
    resident = _elements(t.shapes[cut.name]) + (0 if stream_input else _elements(t.shapes[first]))
    best: dict[str, PlanRow] = {}
    targets, fusable = {n.name: str(n.target) for n in t.nodes}, _fusable(t)
    for steps in plan.patches:
        seq = [(s.node, t.shapes[s.node][1] * area(s.region), list(s.crops)) for s in steps]
        regions = {s.node: s.region for s in steps}
        live = {first: t.shapes[first][1] * area(_input_region(steps, first))} if stream_input else {}
        for name, size, lv in _timeline(seq, resident, live, fusable):
            r = regions[name]
            row = PlanRow(name, targets[name], True, [t.shapes[name][1], r[1] - r[0], r[3] - r[2]], size, lv)
            old = best.get(name)
            best[name] = row if old is None or (lv, size) > (old.live_elements, old.out_elements) else old
    head = [best[n.name] for n in t.nodes[1: plan.cut.index + 1] if n.name in best]
    tail_nodes = t.nodes[plan.cut.index + 1:]
    return MemoryPlan(head + _rows_for(t, tail_nodes, {cut.name: _elements(t.shapes[cut.name])}))


def _input_region(steps, first: str) -> tuple[int, int, int, int]:
    regions = [s.crops[first] for s in steps if first in s.crops]
    return (min(r[0] for r in regions), max(r[1] for r in regions), min(r[2] for r in regions),
            max(r[3] for r in regions))


def patched_extra_macs(t: Traced, plan: PatchPlan) -> tuple[int, int]:
    """(head conv MACs when patched, the same convs run whole), per image; the difference is the halo cost."""
    per_pos = conv_macs_per_position(t)
    patched = sum(area(s.region) * per_pos[s.node] for steps in plan.patches for s in steps if s.node in per_pos)
    whole = sum(prod(t.shapes[n.name][2:]) * per_pos[n.name] for n in t.nodes[1: plan.cut.index + 1]
                if n.name in per_pos)
    return patched, whole
