"""The static schedule of patch-based inference: per patch, the region every head node computes, the
crops and border pads of its inputs; plus the exact MACs and the activation memory plan it implies."""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from slimkit.deploy.edge.graph import Cut, Traced
from slimkit.deploy.edge.regions import Region, clip, needed_input
from slimkit.errors import BadInputError

__all__ = ["Step", "PatchPlan", "tile_bounds", "plan_patches", "conv_macs_per_position"]


@dataclass
class Step:
    node: str
    region: Region  # the part of this node's full output map computed in this patch
    crops: dict[str, Region]  # input node -> region to read, in that input's full-map coordinates
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (window ops only)


@dataclass
class PatchPlan:
    cut: Cut
    grid: tuple[int, int]
    tiles: list[Region]
    patches: list[list[Step]] = field(default_factory=list)  # one step list per tile, head nodes in order


def tile_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """Split [0, length) into `parts` near-equal spans (the first ones take the remainder)."""
    base, extra = divmod(length, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _union(a: Region | None, b: Region) -> Region:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _needs(t: Traced, cut: Cut, tile: Region) -> dict[str, Region]:
    """Backward pass: the region of every head node's output that `tile` of the cut depends on."""
    need: dict[str, Region] = {cut.node: tile}
    for node in reversed(t.nodes[: cut.index + 1]):
        region = need.get(node.name)
        if region is None or node.op == "placeholder":
            continue
        kind, window = t.kinds[node.name]
        for src in t.tensor_inputs(node):
            h, w = t.shapes[src.name][2:]
            want = clip(needed_input(window, region), h, w) if kind == "window" else region
            need[src.name] = _union(need.get(src.name), want)
    return need


def _steps(t: Traced, cut: Cut, need: dict[str, Region]) -> list[Step]:
    steps = []
    for node in t.nodes[1: cut.index + 1]:
        region = need.get(node.name)
        if region is None:
            continue
        kind, window = t.kinds[node.name]
        if kind in ("const", "check"):
            continue  # constants are looked up, not computed; shape-free checks hold for any crop
        crops, pads = {}, (0, 0, 0, 0)
        for src in t.tensor_inputs(node):
            h, w = t.shapes[src.name][2:]
            if kind == "window":
                raw = needed_input(window, region)
                crops[src.name] = clip(raw, h, w)
                pads = (max(0, -raw[0]), max(0, raw[1] - h), max(0, -raw[2]), max(0, raw[3] - w))
            else:
                crops[src.name] = region
        steps.append(Step(node.name, region, crops, pads))
    return steps


def plan_patches(t: Traced, cut: Cut, grid: tuple[int, int]) -> PatchPlan:
    """The schedule for running the head (everything up to `cut`) as a `grid` of output tiles."""
    h, w = t.shapes[cut.node][2:]
    if grid[0] > h or grid[1] > w:
        raise BadInputError(f"patch grid {grid[0]}x{grid[1]} is larger than the {h}x{w} feature map at {cut.label}")
    tiles = [(r0, r1, c0, c1) for r0, r1 in tile_bounds(h, grid[0]) for c0, c1 in tile_bounds(w, grid[1])]
    plan = PatchPlan(cut, grid, tiles)
    plan.patches = [_steps(t, cut, _needs(t, cut, tile)) for tile in tiles]
    return plan


def conv_macs_per_position(t: Traced) -> dict[str, int]:
    """MACs one output position of each conv costs, per image (pooling and elementwise ops count none)."""
    import torch.nn as nn

    modules, out = t.modules, {}
    for node in t.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            m = modules[node.target]
            out[node.name] = m.out_channels * (m.in_channels // m.groups) * prod(m.kernel_size)
    return out


def area(r: Region) -> int:
    return (r[1] - r[0]) * (r[3] - r[2])
