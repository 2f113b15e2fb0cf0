"""Speed guard: int8 is only worth handing back if it is faster, measured, in the same run as fp32.

On x86 ONNX Runtime, int8 QDQ gains a lot on big convs and little or nothing (or loses) on depthwise
convs, hard-swish, squeeze-excite gates, residual adds and tiny layers, where Quantize/Dequantize and
unfused elementwise kernels eat the gain (fp32 fuses them into the conv). Rather than hand back fp32 when
the whole int8 model is slow, the guard profiles fp32 and all-int8 op by op (ONNX Runtime's profiler,
op_profile), prices each op group in both, builds mixed models that keep the groups that lose time in
float, times them interleaved with fp32 and all-int8 (slimkit.profile.timing.measure_interleaved) and keeps
the fastest. It then times fp32 against the chosen model; if int8 is still slower it says so loudly and
flags the report; it never hides it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.op_profile import UNATTRIBUTED, group_costs
from slimkit.compress.quantize.ptq import QuantSettings
from slimkit.profile.timing import Timing, measure_interleaved

__all__ = ["OrtLatency", "speed_groups", "block_groups", "fused_closure", "losing_groups", "speed_guard", "final_check", "SpeedGuardResult", "LatencyFn"]

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


def _hard_swish(g: OnnxGraph) -> list[str]:
    """HardSwish nodes, and the x * HardSigmoid(x) pairs PyTorch's exporter writes for nn.Hardswish."""
    found = [n.name for n in g.nodes if n.op_type == "HardSwish"]
    for n in g.nodes:
        if n.op_type == "Mul":
            sig = next((p for i in n.input if (p := g.upstream(i)) is not None and p.op_type == "HardSigmoid"), None)
            if sig is not None and sig.input[0] in n.input:
                found += [sig.name, n.name]
    return found


def speed_groups(g: OnnxGraph, tiny_fraction: float = 0.01) -> dict[str, list[str]]:
    """Candidate node groups to keep in float, by pattern. Empty groups are dropped.

    Tiny layers: weighted layers under `tiny_fraction` of the largest layer's MACs (SE convs, small heads).
    """
    layers = g.layers()
    largest = max((l.macs for l in layers), default=0)
    hswish = _hard_swish(g)
    gating = [n.name for n in g.nodes if n.op_type in _GATES and n.name not in hswish]
    gating += [n.name for n in g.nodes if n.op_type == "Mul" and n.name not in hswish and any(
        (p := g.upstream(i)) is not None and p.op_type in _GATES for i in n.input)]
    groups = {
        "se_blocks": _se_blocks(g),
        "hard_swish": hswish,
        "gating_activations": list(dict.fromkeys(gating)),
        "depthwise_convs": [l.name for l in layers if l.depthwise],
        "tiny_layers": [l.name for l in layers if l.macs < tiny_fraction * largest],
        "residual_adds": [n.name for n in g.nodes if n.op_type == "Add" and all(i not in g.initializers for i in n.input)],
    }
    return {k: v for k, v in groups.items() if v}


def block_groups(g: OnnxGraph, depth: int = 2) -> dict[str, list[str]]:
    """Nodes by the model block their exported name places them in: `/features/features.7/block/...` ->
    `/features/features.7` (the first `depth` module levels). Blocks of one node are dropped.

    Whole blocks are the other grain of a mixed model: keeping a losing block float puts Quantize/Dequantize
    only at its two ends, where keeping an op kind float (all hard-swishes) puts a pair around every one.
    """
    blocks: dict[str, list[str]] = {}
    for n in g.nodes:
        parts = n.name.split("/")
        if len(parts) > depth + 1 and parts[0] == "":
            blocks.setdefault("/".join(parts[: depth + 1]), []).append(n.name)
    return {k: v for k, v in blocks.items() if len(v) > 1}


@dataclass
class SpeedGuardResult:
    settings: QuantSettings
    path: Path
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float for speed
    trials: list[dict] = field(default_factory=list)
    profile: dict | None = None  # profiled ms per group, fp32 and int8
    fp32: Timing | None = None
    int8: Timing | None = None
    speedup: float = float("nan")  # fp32 median / int8 median, same interleaved run
    verdict: str = ""  # faster | no_gain | slower
    slower_than_fp32: bool = False
    warning: str | None = None
    accuracy_gate: dict | None = None  # set where the mixed model's accuracy was checked against --max-drop and failed

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "speedup": self.speedup, "slower_than_fp32": self.slower_than_fp32,
                "warning": self.warning, "float_nodes": self.float_nodes, "trials": self.trials, "profile": self.profile,
                "accuracy_gate": self.accuracy_gate,
                "fp32_ms": self.fp32.to_dict() if self.fp32 else None, "int8_ms": self.int8.to_dict() if self.int8 else None}


_ACTS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid", "HardSwish", "Tanh")


def fused_closure(g: OnnxGraph, nodes: Sequence[str]) -> list[str]:
    """`nodes` plus the partners ONNX Runtime fuses them with in fp32 (conv + its activation, hard-swish's Mul).

    fp32 runs Conv+Relu (or +HardSwish) as one kernel, profiled under one name: a group is only priced and
    kept float together with its partners, or keeping it float would split a fused kernel.
    """
    out = list(nodes)
    for name in nodes:
        node = g.by_name.get(name)
        if node is None:
            continue
        if node.op_type in ("Conv", "Gemm"):
            users = g.users(node.output[0])
            if len(users) == 1 and users[0].op_type in _ACTS:
                out.append(users[0].name)
                out += [u.name for u in g.users(users[0].output[0]) if u.op_type == "Mul" and node.output[0] in u.input]
        elif node.op_type in _ACTS or node.op_type == "Add":
            for i in node.input:
                up = g.upstream(i)
                if up is not None and up.op_type == "Conv" and len(g.users(i)) <= 2:
                    out.append(up.name)
    return list(dict.fromkeys(out))


def losing_groups(groups: dict[str, list[str]], fp32_ms: dict[str, float], int8_ms: dict[str, float],
                  min_loss_ms: float) -> list[dict]:
    """Groups whose profiled int8 time exceeds their fp32 time by more than `min_loss_ms`, biggest loss first."""
    rows = [{"group": name, "nodes": len(nodes), **group_costs(nodes, fp32_ms, int8_ms)} for name, nodes in groups.items()]
    return sorted([r for r in rows if r["loss_ms"] > min_loss_ms], key=lambda r: -r["loss_ms"])


def _candidates(settings: QuantSettings, groups: dict[str, list[str]], losing: list[dict], most: int) -> dict[str, QuantSettings]:
    """Mixed assignments to time: float for the worst losing group, the two worst, ... (cumulative)."""
    out, current, names = {}, settings, []
    for row in losing:
        if len(out) == most:
            break
        names.append(row["group"])
        if set(groups[row["group"]]) <= current.exclude:
            continue  # nested in a group already float (SE gates inside SE blocks): nothing new to time
        current = current.with_exclude(groups[row["group"]])
        out["+".join(names)] = current
    return out


LOSING_BLOCKS = "losing_blocks"


def _block_candidates(settings: QuantSettings, blocks: dict[str, list[str]], fp32_ms: dict[str, float],
                      int8_ms: dict[str, float], groups: dict[str, list[str]], losing: list[dict]) -> tuple[dict, dict, list[str]]:
    """Float for every block that profiles slower in int8, alone and with the worst losing op group.

    Returns (candidates, their member nodes by name, the losing blocks)."""
    slow = [b for b, nodes in blocks.items() if group_costs(nodes, fp32_ms, int8_ms)["loss_ms"] > 0]
    nodes = [n for b in slow for n in blocks[b] if n not in settings.exclude]
    if not nodes:
        return {}, {}, slow
    members = {LOSING_BLOCKS: nodes}
    out = {LOSING_BLOCKS: settings.with_exclude(nodes)}
    if losing:
        worst = losing[0]["group"]
        out[f"{LOSING_BLOCKS}+{worst}"] = out[LOSING_BLOCKS].with_exclude(groups[worst])
    return out, members, slow


def speed_guard(
    build: Callable[[QuantSettings], Path],
    fp32_path: Path,
    settings: QuantSettings,
    groups: dict[str, list[str]],
    latency: LatencyFn,
    *,
    profiler: Callable[[Path], dict[str, float]] | None = None,
    profile_fp32: Path | None = None,
    margin: float = 0.03,
    min_loss_fraction: float = 0.01,
    most: int = 3,
    final_latency: LatencyFn | None = None,
    blocks: dict[str, list[str]] | None = None,
) -> SpeedGuardResult:
    """Keep in float the op groups that lose time in int8 (ORT's profiler), keep the mixed model only if it
    measures faster, then time fp32 against the result.

    `profiler(path)` gives ms per source node; `profile_fp32` is the fp32 graph whose names the int8 model
    keeps (default `fp32_path`). A group loses when its int8 ms exceed its fp32 ms by more than
    `min_loss_fraction` of the int8 model's profiled total. The all-int8 model and up to `most` cumulative
    mixed assignments are then timed interleaved with fp32 (`latency`); the fastest int8 one is kept, a
    mixed one only when it beats all-int8 by `margin`. `final_latency` (default: `latency`) gives the verdict.
    `blocks` (block_groups) adds the block-grain candidates: every block that profiles slower in int8 kept float.
    """
    result = SpeedGuardResult(settings, build(settings))
    todo = {g: [n for n in nodes if n not in settings.exclude] for g, nodes in groups.items()}
    todo = {g: nodes for g, nodes in todo.items() if nodes}
    if todo and profiler is not None:
        fp32_ms, int8_ms = profiler(Path(profile_fp32 or fp32_path)), profiler(result.path)
        losing = losing_groups(todo, fp32_ms, int8_ms, min_loss_fraction * sum(int8_ms.values()))
        result.profile = {"fp32_ms": sum(fp32_ms.values()), "int8_ms": sum(int8_ms.values()),
                          "unattributed_int8_ms": int8_ms.get(UNATTRIBUTED, 0.0),
                          "groups": {g: group_costs(n, fp32_ms, int8_ms) for g, n in todo.items()},
                          "losing": [r["group"] for r in losing]}
        candidates, members = _candidates(settings, todo, losing, most), dict(todo)
        if blocks:
            extra, block_members, slow = _block_candidates(settings, blocks, fp32_ms, int8_ms, todo, losing)
            candidates.update(extra)
            members.update(block_members)
            result.profile["losing_blocks"] = slow
        if candidates:
            paths = {"fp32": Path(fp32_path), "int8": result.path, **{k: build(s) for k, s in candidates.items()}}
            t = latency(paths)
            best = min(candidates, key=lambda k: t[k].median)
            for k in candidates:
                result.trials.append({"float_groups": k.split("+"), "ratio_vs_int8": t[k].median / t["int8"].median,
                                      "speedup_vs_fp32": t["fp32"].median / t[k].median, "kept": False})
            result.trials.append({"float_groups": [], "ratio_vs_int8": 1.0,
                                  "speedup_vs_fp32": t["fp32"].median / t["int8"].median, "kept": True})
            if t[best].median < t["int8"].median * (1.0 - margin):
                result.trials[-1]["kept"] = False
                result.trials[list(candidates).index(best)]["kept"] = True
                result.settings, result.path = candidates[best], paths[best]
                for g in best.split("+"):
                    result.float_nodes.update({n: f"speed: {g} lose time in int8 (profiled), mixed model measured faster"
                                               for n in members[g] if n not in result.float_nodes})
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
