"""`patch_model()`: patch-based inference (MCUNetV2) for any fx-traceable CNN.

The head of the network (up to a cut) runs as a grid of output tiles; each tile's input region follows
from the receptive field of every op (stride, padding, dilation), so neighbouring tiles overlap by a
halo and recompute it. The tail runs whole. The cut and grid are given, or chosen for the lowest arena
(or the fewest extra MACs under a memory target) from the exact memory plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from slimkit.deploy.edge.graph import Cut, Traced, trace_model
from slimkit.deploy.edge.memplan import patched_extra_macs, patched_plan
from slimkit.deploy.edge.patched import PatchedModel
from slimkit.deploy.edge.plan import PatchPlan, plan_patches
from slimkit.errors import BadInputError

__all__ = ["PatchConfig", "Candidate", "patch_model", "parse_grid", "parse_bytes", "choose_plan"]

SEARCH_GRIDS = ((2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8))


@dataclass
class PatchConfig:
    """What to patch: a grid ('4x4'), and either a cut (`until`, a module path) or a memory target."""

    grid: tuple[int, int] | None = (4, 4)
    until: str | None = None
    peak_memory_bytes: int | None = None  # arena target at `bytes_per_element`
    bytes_per_element: int = 1  # 1: int8 deployment (the MCU case), 4: fp32
    stream_input: bool = False  # the arena holds one patch's input region, not the whole image


@dataclass
class Candidate:
    plan: PatchPlan
    arena_elements: int
    extra_macs: int

    @property
    def label(self) -> str:
        return f"--patches {self.plan.grid[0]}x{self.plan.grid[1]} --until {self.plan.cut.label}"


def parse_grid(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    try:
        grid = tuple(int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    except ValueError:
        raise BadInputError(f"--patches {text!r}: expected ROWSxCOLS such as 4x4") from None
    if min(grid) < 1:
        raise BadInputError(f"--patches {text!r}: rows and columns must be >= 1")
    return grid  # type: ignore[return-value]


def parse_bytes(text: str) -> int:
    """'256KB' -> 262144 (KB/MB are binary, as MCU SRAM sizes are quoted)."""
    units = {"kib": 1024, "kb": 1024, "k": 1024, "mib": 1024**2, "mb": 1024**2, "m": 1024**2, "b": 1, "": 1}
    s = text.strip().lower()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):].strip()
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise BadInputError(f"--peak-memory {text!r}: expected a size such as 256KB or 1.5MB") from None
    if value <= 0:
        raise BadInputError(f"--peak-memory {text!r}: must be positive")
    return int(value)


def _evaluate(t: Traced, cut: Cut, grid: tuple[int, int], stream_input: bool) -> Candidate:
    plan = plan_patches(t, cut, grid)
    patched, whole = patched_extra_macs(t, plan)
    return Candidate(plan, patched_plan(t, plan, stream_input).arena_elements, patched - whole)


def _fits(t: Traced, cut: Cut, grid: tuple[int, int]) -> bool:
    h, w = t.shapes[cut.node][2:]
    return grid[0] <= h and grid[1] <= w


def choose_plan(t: Traced, cfg: PatchConfig) -> Candidate:
    """The cut and grid: as given, else the lowest arena, or under a target the fewest extra MACs."""
    cuts = [t.find_cut(cfg.until)] if cfg.until else t.cuts
    grids = [cfg.grid] if cfg.grid else list(SEARCH_GRIDS)
    if cfg.until and cfg.grid and cfg.peak_memory_bytes is None:
        return _evaluate(t, cuts[0], cfg.grid, cfg.stream_input)
    found = [_evaluate(t, c, g, cfg.stream_input) for c in cuts for g in grids if _fits(t, c, g) and g != (1, 1)]
    if not found:
        raise BadInputError(f"patch grid {grids[0][0]}x{grids[0][1]} is larger than every feature map it could cut")
    bpe = cfg.bytes_per_element
    if cfg.peak_memory_bytes is None:
        return min(found, key=lambda c: (c.arena_elements, c.extra_macs))
    ok = [c for c in found if c.arena_elements * bpe <= cfg.peak_memory_bytes]
    if not ok:
        best = min(found, key=lambda c: (c.arena_elements, c.extra_macs))
        raise BadInputError(f"peak memory {cfg.peak_memory_bytes / 1024:.0f} KB cannot be met at {bpe} B/element; "
                            f"closest: {best.arena_elements * bpe / 1024:.1f} KB with {best.label}")
    return min(ok, key=lambda c: (c.extra_macs, c.arena_elements))


def patch_model(model: nn.Module, input_size: tuple[int, int, int], cfg: PatchConfig | None = None
                ) -> tuple[PatchedModel, Traced, Candidate]:
    """Return a new module that runs `model`'s head patch by patch (same weights; `model` is unchanged).

    Put `model` in eval mode first: BatchNorm must use its running statistics for patches to be exact.
    """
    cfg = cfg or PatchConfig()
    if model.training:
        raise BadInputError("patch_model needs the model in eval mode (BatchNorm batch statistics are not local)")
    traced = trace_model(model, input_size)
    chosen = choose_plan(traced, cfg)
    return PatchedModel(traced, chosen.plan), traced, chosen
