"""Speed guard: int8 is only worth handing back if it is faster, measured, in the same run as fp32.

On x86 ONNX Runtime, int8 QDQ gains a lot on big convs and little or nothing (or loses) on SE blocks,
sigmoid/hard-swish gating, depthwise convs and tiny layers, where Quantize/Dequantize overhead eats the
gain. The guard builds variants that keep one such group in float, times them interleaved with the
all-int8 model (slimkit.profile.timing.measure_interleaved), keeps a group in float when that is
measurably faster, and finally times fp32 against the chosen int8 model. If int8 is still slower it
says so loudly and flags the report; it never hides it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.ptq import QuantSettings
from slimkit.profile.timing import Timing, measure_interleaved

__all__ = ["OrtLatency", "speed_groups", "speed_guard", "final_check", "SpeedGuardResult", "LatencyFn"]

log = logging.getLogger(__name__)

LatencyFn = Callable[[dict[str, Path]], dict[str, Timing]]
_GATES = ("Sigmoid", "HardSigmoid", "HardSwish", "Tanh")
_POOLS = ("GlobalAveragePool", "ReduceMean")


class OrtLatency:
    """Times ONNX models in ONNX Runtime, interleaved; `runner` and `clock` are injectable for tests."""

    def __init__(self, input_size: Sequence[int], *, batch: int = 1, threads: int = 1, warmup: int = 5,
                 repetitions: int = 60, rounds: int = 6, min_time_s: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, runner: Callable[[Path], Callable[[], object]] | None = None):
        self.input_size, self.batch, self.threads = tuple(input_size), batch, threads
        self.kwargs = dict(warmup=warmup, repetitions=repetitions, rounds=rounds, min_time_s=min_time_s, clock=clock)
        self.runner = runner or self._ort_runner
        self.calls = 0

    def _ort_runner(self, path: Path) -> Callable[[], object]:
        from slimkit.compress.quantize.ort_eval import session

        sess = session(path, self.threads)
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((self.batch, *self.input_size)).astype(np.float32)}
        return lambda: sess.run(None, feed)

    def conditions(self) -> dict:
        import onnxruntime as ort

        return {"runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider", "threads": self.threads,
                "batch": self.batch, "input_size": list(self.input_size), **{k: v for k, v in self.kwargs.items() if k != "clock"}}

    def __call__(self, paths: dict[str, Path]) -> dict[str, Timing]:
        self.calls += 1
        runners = {name: self.runner(Path(p)) for name, p in paths.items()}
        return measure_interleaved(runners, **self.kwargs)


def _se_blocks(g: OnnxGraph) -> list[str]:
    """Nodes of squeeze-excitation blocks: pool -> ... -> Mul(x, gate), where x also feeds the pool."""
    found: list[str] = []
    for pool in g.nodes:
        if pool.op_type not in _POOLS:
            continue
        source, frontier, parents = pool.input[0], [(pool, 0)], {pool.name: None}
        while frontier:
            node, depth = frontier.pop()
            for user in g.users(node.output[0]) if depth < 8 else []:
                if user.op_type == "Mul" and source in user.input:
                    path = [user.name, node.name]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    found += path
                elif user.name not in parents:
                    parents[user.name] = node.name
                    frontier.append((user, depth + 1))
    return list(dict.fromkeys(found))


def speed_groups(g: OnnxGraph, tiny_fraction: float = 0.01) -> dict[str, list[str]]:
    """Candidate node groups to keep in float, by pattern. Empty groups are dropped.

    Tiny layers: weighted layers under `tiny_fraction` of the largest layer's MACs (SE convs, small heads).
    """
    layers = g.layers()
    largest = max((l.macs for l in layers), default=0)
    gating = [n.name for n in g.nodes if n.op_type in _GATES]
    gating += [n.name for n in g.nodes if n.op_type == "Mul" and any(
        (p := g.upstream(i)) is not None and p.op_type in _GATES for i in n.input)]
    groups = {
        "se_blocks": _se_blocks(g),
        "gating_activations": list(dict.fromkeys(gating)),
        "depthwise_convs": [l.name for l in layers if l.depthwise],
        "tiny_layers": [l.name for l in layers if l.macs < tiny_fraction * largest],
        "residual_adds": [n.name for n in g.nodes if n.op_type == "Add" and all(i not in g.initializers for i in n.input)],
    }
    return {k: v for k, v in groups.items() if v}


@dataclass
class SpeedGuardResult:
    settings: QuantSettings
    path: Path
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float for speed
    trials: list[dict] = field(default_factory=list)
    fp32: Timing | None = None
    int8: Timing | None = None
    speedup: float = float("nan")  # fp32 median / int8 median, same interleaved run
    verdict: str = ""  # faster | no_gain | slower
    slower_than_fp32: bool = False
    warning: str | None = None

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "speedup": self.speedup, "slower_than_fp32": self.slower_than_fp32,
                "warning": self.warning, "float_nodes": self.float_nodes, "trials": self.trials,
                "fp32_ms": self.fp32.to_dict() if self.fp32 else None, "int8_ms": self.int8.to_dict() if self.int8 else None}


def _try(build, latency: LatencyFn, current: QuantSettings, trial: QuantSettings, margin: float) -> tuple[bool, dict]:
    t = latency({"current": build(current), "trial": build(trial)})
    ratio = t["trial"].median / t["current"].median
    return ratio < 1.0 - margin, {"ratio_vs_current": ratio, "current_ms": t["current"].median, "trial_ms": t["trial"].median}


def speed_guard(
    build: Callable[[QuantSettings], Path],
    fp32_path: Path,
    settings: QuantSettings,
    groups: dict[str, list[str]],
    latency: LatencyFn,
    *,
    margin: float = 0.03,
    final_latency: LatencyFn | None = None,
) -> SpeedGuardResult:
    """Keep in float the groups that measurably slow int8 down, then time fp32 against the result.

    `latency` screens the variants; `final_latency` (default: the same) times fp32 against the result.
    """
    paths = {"int8": build(settings)}
    todo = {g: [n for n in nodes if n not in settings.exclude] for g, nodes in groups.items()}
    todo = {g: nodes for g, nodes in todo.items() if nodes}
    for g, nodes in todo.items():
        paths[g] = build(settings.with_exclude(nodes))
    result = SpeedGuardResult(settings, paths["int8"])
    if todo:
        first = latency(paths)
        base = first["int8"].median
        ranked = sorted(todo, key=lambda g: first[g].median)
        current = settings
        for g in ranked:
            result.trials.append({"group": g, "nodes": len(todo[g]), "screen_ratio_vs_int8": first[g].median / base})
            if first[g].median >= base * (1.0 - margin):
                continue
            better, info = _try(build, latency, current, current.with_exclude(todo[g]), margin)
            result.trials[-1].update(info, kept_float=better)
            if better:
                current = current.with_exclude(todo[g])
                result.float_nodes.update({n: f"speed: {g} measured faster in float" for n in todo[g]})
        result.settings, result.path = current, build(current)
    return final_check(final_latency or latency, fp32_path, result, margin)


def final_check(latency: LatencyFn, fp32_path: Path, result: SpeedGuardResult, margin: float = 0.03) -> SpeedGuardResult:
    """Time fp32 against `result.path` interleaved and record the verdict (warns loudly when slower)."""
    final = latency({"fp32": Path(fp32_path), "int8": result.path})
    _verdict(result, final["fp32"], final["int8"], margin)
    return result


def _verdict(result: SpeedGuardResult, fp32: Timing, int8: Timing, margin: float) -> None:
    result.fp32, result.int8 = fp32, int8
    result.speedup = fp32.median / int8.median
    result.slower_than_fp32 = result.speedup < 1.0
    result.verdict = "faster" if result.speedup >= 1.0 + margin else ("slower" if result.slower_than_fp32 else "no_gain")
    if result.slower_than_fp32:
        result.warning = (f"WARNING: the int8 model is SLOWER than fp32 ({int8.median:.3f} ms vs {fp32.median:.3f} ms "
                          f"median, {result.speedup:.2f}x) even with slow parts kept in float; use the fp32 model")
        log.warning(result.warning)
    elif result.verdict == "no_gain":
        result.warning = f"int8 is not measurably faster than fp32 ({result.speedup:.2f}x)"
        log.warning(result.warning)
