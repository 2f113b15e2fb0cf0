"""The ops a per-layer latency table times: each conv2d / linear layer of a model as a standalone op with its
real input shape, at a grid of widths; and the build (export once, then time interleaved)."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["layer_specs", "spec_key", "spec_module", "grid_widths", "table_ops", "prepare_layer_table",
           "build_layer_table", "PreparedTable", "DEFAULT_GRID", "op_widths"]

log = logging.getLogger(__name__)
# Widths are multiples of `step` (CPU kernels block channels by 8 or 16); a line keeps at most `points` of
# them by doubling the spacing, so a 512-wide layer is timed every 32 channels and a 64-wide one every 8.
DEFAULT_GRID = {"step": 8, "points": 16, "max_layer_prune": 0.9}


def layer_specs(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Every conv2d / linear layer the model runs on `example_inputs` (batch 1), with the shape of its input."""
    from slimkit.compress.prune.structured import hooked_forward
    from slimkit.utils.modes import eval_mode

    specs: dict[str, dict[str, Any]] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(m, inp, out):
        t = inp[0] if inp and isinstance(inp[0], torch.Tensor) else None
        if t is None or names[m] in specs:
            return
        if isinstance(m, nn.Conv2d) and t.dim() == 4 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            specs[names[m]] = {"op": "conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
                               "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
                               "groups": m.groups, "depthwise": dw, "bias": m.bias is not None, "hw": list(t.shape[-2:])}
        elif isinstance(m, nn.Linear):
            specs[names[m]] = {"op": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None,
                               "rows": t.numel() // m.in_features}

    with eval_mode(model):
        hooked_forward(model, example_inputs, (nn.Conv2d, nn.Linear), hook)
    return specs


def spec_key(spec: dict[str, Any], ci: int, co: int) -> str:
    """The table key of `spec`'s op at input width ci and output width co (layers of one shape share it)."""
    if spec["op"] == "linear":
        return f"linear:{ci}x{co}{'-b' if spec['bias'] else ''}@{spec['rows']}"
    pair = lambda v: f"{v[0]}x{v[1]}"  # noqa: E731
    groups = "dw" if spec["depthwise"] else spec["groups"]
    return (f"conv2d:{ci}x{co}-k{pair(spec['kernel'])}-s{pair(spec['stride'])}-p{pair(spec['padding'])}"
            f"-d{pair(spec['dilation'])}-g{groups}{'-b' if spec['bias'] else ''}@{pair(spec['hw'])}")


def spec_module(spec: dict[str, Any], ci: int, co: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """The standalone op and its (C, H, W) input."""
    if spec["op"] == "linear":
        return nn.Linear(ci, co, bias=spec["bias"]), (1, spec["rows"], ci)
    groups = ci if spec["depthwise"] else spec["groups"]
    conv = nn.Conv2d(ci, co, spec["kernel"], spec["stride"], spec["padding"], spec["dilation"], groups, spec["bias"])
    return conv, (ci, *spec["hw"])


def grid_widths(full: int, spec: dict[str, Any], kind: str, grid: dict[str, Any]) -> list[int]:
    """Widths timed along one dimension: multiples of the spacing from the prune floor up, and the full width.
    Grouped (not depthwise) convs get no line: their widths are bound to the groups."""
    step, points, mlp = (int(grid.get(k, DEFAULT_GRID[k])) if k != "max_layer_prune" else float(grid.get(k, DEFAULT_GRID[k]))
                         for k in ("step", "points", "max_layer_prune"))
    if full <= step or (spec["op"] == "conv2d" and spec["groups"] > 1 and not spec["depthwise"]):
        return [full]
    spacing = step
    while full / spacing > points:
        spacing *= 2
    floor = math.ceil(full * (1 - mlp) - 1e-9)
    return [c for c in range(spacing, full, spacing) if c >= floor] + [full]


def op_widths(spec: dict[str, Any], kind: str, c: int) -> tuple[int, int]:
    """(in, out) of a layer with its `kind` dimension at width c and the other full (depthwise: both c)."""
    if spec.get("depthwise"):
        return c, c
    return (c, spec["out"]) if kind == "in" else (spec["in"], c)


def table_ops(specs: dict[str, dict[str, Any]], grid: dict[str, Any]) -> dict[str, tuple[dict, int, int]]:
    """Every op the table times: key -> (spec, in width, out width); each layer's full width and its two lines."""
    ops: dict[str, tuple[dict, int, int]] = {}
    for spec in specs.values():
        ops.setdefault(spec_key(spec, spec["in"], spec["out"]), (spec, spec["in"], spec["out"]))
        for kind in ("out",) if spec.get("depthwise") else ("out", "in"):
            for c in grid_widths(spec[kind], spec, kind, grid):
                ci, co = op_widths(spec, kind, c)
                ops.setdefault(spec_key(spec, ci, co), (spec, ci, co))
    return ops


@dataclass
class PreparedTable:
    """Every op exported and opened in ONNX Runtime, not timed yet (hold a CPU lock only for `time`)."""

    input: list[int]
    specs: dict[str, dict[str, Any]]
    grid: dict[str, Any]
    threads: int
    runners: dict[str, Callable[[], object]]

    def time(self, repetitions: int = 20, rounds: int = 5):
        """Time every op, the empty call and the whole model interleaved; returns the LayerTable."""
        from slimkit.compress.prune.layer_table import LayerTable
        from slimkit.search.latency import conditions, time_runners

        got = time_runners(self.runners, repetitions=repetitions, rounds=rounds)
        entries = {k: m.to_dict() for k, m in got.items() if k not in ("call", "model")}
        return LayerTable(conditions(self.threads, repetitions, rounds), self.input, self.specs, entries,
                          got["call"].to_dict(), got["model"].to_dict(), dict(self.grid))


def prepare_layer_table(model: nn.Module, example_inputs: torch.Tensor, threads: int = 1, *,
                        grid: dict[str, Any] | None = None, progress: Callable[[], None] | None = None) -> PreparedTable:
    """Export (verified) every op of `model`'s table, an empty graph and the model itself (unchanged)."""
    from slimkit.search.latency import module_runners, part_module

    grid = {**DEFAULT_GRID, **(grid or {})}
    x = example_inputs[:1]
    specs = layer_specs(model, x)
    torch.manual_seed(0)  # random weights: an op's latency does not depend on them
    modules = {"call": part_module(f"call:{x.shape[1]}@{x.shape[-1]}"),
               "model": (copy.deepcopy(model), tuple(x.shape[1:]))}
    modules.update({k: spec_module(spec, ci, co) for k, (spec, ci, co) in table_ops(specs, grid).items()})
    log.info("latency table: exporting %d ops of %d layers", len(modules) - 2, len(specs))
    return PreparedTable(list(x.shape), specs, grid, int(threads), module_runners(modules, threads, progress=progress))


def build_layer_table(model: nn.Module, example_inputs: torch.Tensor, threads: int = 1, *,
                      grid: dict[str, Any] | None = None, repetitions: int = 20, rounds: int = 5,
                      progress: Callable[[], None] | None = None):
    """Export and time `model`'s per-layer latency table on this machine (model unchanged)."""
    prepared = prepare_layer_table(model, example_inputs, threads, grid=grid, progress=progress)
    return prepared.time(repetitions, rounds)
