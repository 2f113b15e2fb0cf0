"""Per-layer latency table of one concrete model, for pruning that chooses widths by the latency they save.

Every conv2d / linear layer is timed as a standalone ONNX op with its real input shape, at a grid of
output widths (input at full width) and a grid of input widths (output at full width), on ONNX Runtime
at the configured thread count; layers of the same shape share entries. All ops, an empty graph (the
per-call overhead each standalone op paid) and the whole model are timed interleaved in the same rounds.

A layer's cost at widths (ci, co) is its op time minus the overhead: exact where the table holds that op,
otherwise the separable product T(ci, Co) * T(Ci, co) / T(Ci, Co) of its two grid lines (linear between
grid points). A pruned model's latency is predicted as the measured whole model minus what its layers
cost at full width plus what they cost at the new widths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.compress.prune.layer_ops import grid_widths, layer_specs, op_widths, spec_key
from slimkit.errors import BadInputError

__all__ = ["LayerTable", "TABLE_FORMAT", "TABLE_VERSION"]

log = logging.getLogger(__name__)
TABLE_FORMAT, TABLE_VERSION = "slimkit-layer-latency-table", 1


@dataclass(eq=False)
class LayerTable:
    conditions: dict[str, Any]  # cpu, avx512, vnni, threads, onnxruntime, torch, repetitions, rounds
    input: list[int]  # the model input the table was timed at (batch 1)
    layers: dict[str, dict[str, Any]]  # layer name -> its op spec at full width (see layer_ops.layer_specs)
    entries: dict[str, dict[str, float]]  # op key -> median_ms, iqr_ms, p90_ms, min_ms, repetitions
    overhead: dict[str, float]  # one session.run of an empty graph
    whole: dict[str, float]  # the whole model, timed in the same rounds
    grid: dict[str, Any] = field(default_factory=dict)  # step, points, max_layer_prune the grid was built with
    source: str = "built here"
    _cache: dict = field(default_factory=dict, init=False, repr=False)  # (name, ci, co) -> net ms

    def lookup(self, key: str) -> float:
        """The stored median (ms) of one op."""
        if key not in self.entries:
            raise BadInputError(f"latency table has no entry {key!r}")
        return self.entries[key]["median_ms"]

    @property
    def whole_ms(self) -> float:
        return self.whole["median_ms"]

    def _net(self, key: str) -> float:
        return max(self.lookup(key) - self.overhead["median_ms"], 0.0)

    def line(self, name: str, kind: str) -> list[int]:
        """The widths timed for layer `name` along its `kind` ("in" | "out") dimension (ascending)."""
        spec = self.layers[name]
        full = spec[kind]
        cands = grid_widths(full, spec, kind, self.grid)
        return [c for c in cands if spec_key(spec, *op_widths(spec, kind, c)) in self.entries]

    def _along(self, name: str, kind: str, c: float) -> float | None:
        """Net cost with one dimension at width c (the other full): linear between the grid points timed,
        proportional below the smallest; None when that line was not timed."""
        spec = self.layers[name]
        widths = self.line(name, kind)
        if len(widths) < 2:
            return None
        costs = [self._net(spec_key(spec, *op_widths(spec, kind, w))) for w in widths]
        if c < widths[0]:
            return costs[0] * c / widths[0]
        return float(np.interp(c, widths, costs))

    def net_ms(self, name: str, ci: float, co: float) -> float:
        """Predicted cost (ms, overhead removed) of layer `name` at input width ci and output width co."""
        key = (name, float(ci), float(co))
        if key not in self._cache:
            self._cache[key] = self._net_uncached(name, float(ci), float(co))
        return self._cache[key]

    def _net_uncached(self, name: str, ci: float, co: float) -> float:
        spec = self.layers[name]
        if spec.get("depthwise"):
            ci = co = min(ci, co)
        if float(ci).is_integer() and float(co).is_integer():
            key = spec_key(spec, int(ci), int(co))
            if key in self.entries:
                return self._net(key)
        full = self._net(spec_key(spec, spec["in"], spec["out"]))
        if spec.get("depthwise"):
            got = self._along(name, "out", co)
            return full * co / spec["out"] if got is None else got
        a = self._along(name, "out", co) if co != spec["out"] else full
        b = self._along(name, "in", ci) if ci != spec["in"] else full
        a = full * co / spec["out"] if a is None else a  # no grid line: MACs-proportional
        b = full * ci / spec["in"] if b is None else b
        return a * b / full if full > 0 else 0.0

    def predict_ms(self, widths: dict[str, tuple[float, float]]) -> float:
        """Whole-model latency with the layers in `widths` (name -> (in, out)) at those widths, the rest full."""
        total = self.whole_ms
        for name, (ci, co) in widths.items():
            spec = self.layers[name]
            total += self.net_ms(name, ci, co) - self.net_ms(name, spec["in"], spec["out"])
        return total

    def predict_model_ms(self, model, example_inputs) -> float:
        """Predicted latency of `model` (this table's model, pruned to any widths)."""
        here = layer_specs(model, example_inputs)
        missing = sorted(set(here) - set(self.layers))
        if missing:
            raise BadInputError(f"latency table has no layer {missing[0]}: it was built for another model")
        return self.predict_ms({n: (s["in"], s["out"]) for n, s in here.items()})

    def check(self, model, example_inputs, threads: int, where: str = "latency table") -> list[str]:
        """BadInputError when the table was built for another model, input shape or thread count; a loud warning
        (and the returned notes) when it was measured on another CPU or ONNX Runtime version."""
        from slimkit.search.latency import condition_mismatches

        shape = list(example_inputs[:1].shape)
        if shape != self.input:
            raise BadInputError(f"{where} was built for input {self.input}, not {shape}: rebuild it for this input")
        if int(self.conditions.get("threads", -1)) != int(threads):
            raise BadInputError(f"{where} was timed with {self.conditions.get('threads')} ONNX Runtime thread(s), "
                                f"not {threads}: rebuild it with --threads {threads}")
        here = layer_specs(model, example_inputs)
        for name, spec in here.items():
            if self.layers.get(name) != spec:
                there = spec_key(self.layers[name], self.layers[name]["in"], self.layers[name]["out"]) \
                    if name in self.layers else "no such layer"
                raise BadInputError(f"{where} was built for another model: layer {name} is "
                                    f"{spec_key(spec, spec['in'], spec['out'])} here, {there} in the table")
        notes = [p for p in condition_mismatches(self.conditions, threads) if not p.startswith("threads")]
        for p in notes:
            log.warning("LATENCY TABLE MEASURED ELSEWHERE (%s): its widths may not be the fast ones here; rebuild "
                        "it on this machine", p)
        return [f"latency table measured elsewhere: {p}" for p in notes]

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "conditions": self.conditions, "input": self.input,
                "grid": self.grid, "overhead": self.overhead, "whole": self.whole, "layers": self.layers,
                "entries": self.entries}

    def save(self, path: str | Path) -> Path:
        from slimkit.utils.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LayerTable":
        from slimkit.utils.io import read_versioned_json

        data = read_versioned_json(path, TABLE_FORMAT, TABLE_VERSION, "per-layer latency table (build one with "
                                   "`slimkit prune --allocation latency-table --latency-table PATH`)")
        try:
            return cls(data["conditions"], list(data["input"]), data["layers"], data["entries"], data["overhead"],
                       data["whole"], data.get("grid", {}), str(path))
        except KeyError as exc:
            raise BadInputError(f"{path}: latency table lacks {exc}") from None
