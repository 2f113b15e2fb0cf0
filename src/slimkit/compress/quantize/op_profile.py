"""Per-op time from ONNX Runtime's profiler, attributed back to the nodes of the model slimkit quantized.

ORT profiles the graph it really runs: fused (Conv+Relu in NCHWc, QLinearConv), renamed
(`/x/Conv_token_3`, `/x/Relu_output_0_nchwc`) and generated nodes (an inlined HardSwish becomes
`HardSigmoid_133` + `QLinearMul_596`; layout `Transpose`/`Reorder*`). To say which *source* node costs
what, each profiled node is mapped to a source node name:

1. the longest source node name that prefixes the profiled node's name (ORT and ORT's quantizer derive
   names from the source: `/x/Conv_token_3`, `/x/Conv_output_0_QuantizeLinear` -> `/x/Conv`);
2. else the longest source name that prefixes one of its output tensors' names;
3. else whatever its first input's producer (in the optimized graph) maps to: a generated node is charged
   to the node whose output it processes.

What maps nowhere (the model input's QuantizeLinear, say) is kept under UNATTRIBUTED, so the attributed
total always equals the profiled total.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["UNATTRIBUTED", "OptNode", "attribute", "OrtOpProfiler", "group_costs"]

UNATTRIBUTED = "(unattributed)"
OptNode = tuple[str, Sequence[str], Sequence[str]]  # name, inputs, outputs of a node of the optimized graph


class _Prefixes:
    """Longest source node name that is a prefix of a string (names are few hundred: a plain scan is enough)."""

    def __init__(self, names: Iterable[str]):
        self.names = sorted({n for n in names if n}, key=len, reverse=True)

    def __call__(self, text: str) -> str | None:
        return next((n for n in self.names if text.startswith(n)), None)


def attribute(op_ms: dict[str, float], opt_nodes: Sequence[OptNode], source_names: Iterable[str]) -> dict[str, float]:
    """Sum the profiled ms of the optimized graph's nodes (`op_ms`) per source node name (rules in the module doc)."""
    prefix = _Prefixes(source_names)
    producer = {out: name for name, _, outs in opt_nodes for out in outs}
    inputs = {name: list(ins) for name, ins, _ in opt_nodes}
    outputs = {name: list(outs) for name, _, outs in opt_nodes}
    memo: dict[str, str] = {}

    def owner(name: str, depth: int = 0) -> str:
        if name in memo:
            return memo[name]
        found = prefix(name) or next((p for p in map(prefix, outputs.get(name, [])) if p), None)
        if found is None and depth < 64:
            first = next((t for t in inputs.get(name, []) if t), None)
            up = producer.get(first) if first else None
            found = owner(up, depth + 1) if up else (prefix(first) if first else None)
        memo[name] = found or UNATTRIBUTED
        return memo[name]

    totals: dict[str, float] = defaultdict(float)
    for name, ms in op_ms.items():
        totals[owner(name)] += ms
    return dict(totals)


def group_costs(nodes: Iterable[str], fp32_ms: dict[str, float], int8_ms: dict[str, float]) -> dict[str, float]:
    """fp32 and int8 ms of a set of source nodes, and what int8 loses on them (int8 - fp32; > 0: slower in int8)."""
    names = set(nodes)
    f = sum(v for k, v in fp32_ms.items() if k in names)
    i = sum(v for k, v in int8_ms.items() if k in names)
    return {"fp32_ms": f, "int8_ms": i, "loss_ms": i - f}


class OrtOpProfiler:
    """Profiles one ONNX model in ONNX Runtime (as deployed: all graph optimizations) and attributes its ops.

    Calling it with a model path returns {source node name: mean ms per inference}.
    """

    def __init__(self, input_size: Sequence[int], source_names: Iterable[str], *, threads: int = 1, runs: int = 20,
                 warmup: int = 3):
        self.input_size, self.source_names = tuple(input_size), list(source_names)
        self.threads, self.runs, self.warmup = threads, runs, warmup

    def conditions(self) -> dict:
        return {"tool": "onnxruntime SessionOptions.enable_profiling", "threads": self.threads, "runs": self.runs,
                "warmup": self.warmup, "batch": 1, "input_size": list(self.input_size)}

    def __call__(self, path: str | Path) -> dict[str, float]:
        op_ms, opt_nodes = self.profile(path)
        return attribute(op_ms, opt_nodes, self.source_names)

    def profile(self, path: str | Path) -> tuple[dict[str, float], list[OptNode]]:
        """Mean ms per inference of every node ORT ran, and the optimized graph's nodes."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="slimkit-opprof-") as tmp:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = self.threads, 1, 3
            # One session both saves the graph it runs (names to attribute) and profiles it.
            opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "prof")
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, *self.input_size)).astype(np.float32)}
            # The first runs allocate and pack weights: _node_ms drops them, it keeps steady-state cost.
            for _ in range(self.warmup + self.runs):
                sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
            graph = onnx.load(str(Path(tmp) / "optimized.onnx")).graph
        return _node_ms(events, self.warmup, self.runs), [(n.name, list(n.input), list(n.output)) for n in graph.node]


def _node_ms(events: list[dict], warmup: int, runs: int) -> dict[str, float]:
    """Mean ms per run of each node's kernel over the last `runs` runs (ORT numbers runs in event order)."""
    per_run: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_run[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1e3)
    return {name: sum(d[warmup:]) / runs if len(d) > warmup else sum(d) / max(1, len(d)) for name, d in per_run.items()}
