"""Meet a budget: find the pruning level whose *measured* MACs / params / latency hit the target.

MACs and params: bisection on a per-layer estimate (exact for conv/linear widths), then real
pruned copies are measured and the estimate's goal is corrected by the measured miss (secant
steps) until the measured ratio is within 2% of the target, or the best of a few tries is kept.
Latency: bisection directly on ONNX Runtime latency ratios of real pruned copies, timed
interleaved with the original; each candidate rounding is searched and the one that meets the
target while keeping the most MACs wins. With a per-layer latency table (allocation latency-table) the
table predicts the cut and a few measured copies correct it (search_latency_table).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from slimkit.compress.prune.adapters import clear_caches
from slimkit.compress.prune.measure import count_macs, count_params, ort_runner
from slimkit.compress.prune.structured import Plan, allocate, apply_plan, removed_channels

__all__ = ["Trial", "estimate", "search_structural", "search_latency", "search_latency_table", "build_trial"]

log = logging.getLogger(__name__)
INNER_TOLERANCE = 0.02
MAX_TRIALS = 8


@dataclass
class Trial:
    level: float
    round_to: int
    keeps: list[int]
    macs: int
    params: int
    ratio: float  # measured quantity / original
    predicted: float | None = None  # the latency table's predicted latency ratio (allocation latency-table)

    def summary(self) -> dict:
        out = {"level": round(self.level, 5), "round_to": self.round_to, "ratio": round(self.ratio, 5),
               "macs": self.macs, "params": self.params}
        if self.predicted is not None:
            out["predicted"] = round(self.predicted, 5)
        return out


def estimate(plan: Plan, keeps: list[int], stats: dict[str, dict], base: dict[str, int]) -> dict[str, float]:
    """Estimated MACs and params after pruning (conv/linear/norm widths; the rest unchanged)."""
    removed = removed_channels(plan, keeps)
    macs = base["macs"] - sum(s["macs"] for s in stats.values())
    params = base["params"] - sum(s["params"] for s in stats.values())
    for name, s in stats.items():
        f_out = 1 - removed[(name, "out")] / s["out"] if s["out"] else 1.0
        f_in = 1 - removed[(name, "in")] / s["in"] if s["in"] else 1.0
        f = min(f_in, f_out) if s["depthwise"] else f_in * f_out
        macs += s["macs"] * f
        params += s["params"] * f
    return {"macs": max(macs, 0.0), "params": max(params, 0.0)}


def build_trial(model: nn.Module, x: torch.Tensor, plan: Plan, keeps: list[int]) -> nn.Module:
    clear_caches(model)
    trial = copy.deepcopy(model)
    return apply_plan(trial, x, plan, keeps)


def _solve(fn: Callable[[float], float], goal: float, hi: float, iters: int = 40) -> float:
    """Smallest level in [0, hi] with fn(level) <= goal (fn non-increasing), by bisection."""
    lo = 0.0
    if fn(hi) > goal:
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if fn(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return hi


def search_structural(model, x, plan, stats, base, kind, ratio, alloc: Callable[[float], list[int]], max_level: float,
                      check, round_to: int = 1) -> tuple[Trial, list[Trial]]:
    """Find the level whose kept channels `alloc(level)` measure closest to `ratio` of `kind` (macs | params)."""
    def est(level: float) -> float:
        return estimate(plan, alloc(level), stats, base)[kind] / base[kind]

    goal, trials = ratio, []
    lo = hi = None  # (level, measured) bracketing the target: lo measures above it, hi below
    level = _solve(est, goal, max_level)
    for _ in range(MAX_TRIALS):
        keeps = alloc(level)
        if any(t.keeps == keeps for t in trials):
            if lo is None or hi is None or hi[0] - lo[0] < 1e-4:
                break
            level = (lo[0] + hi[0]) / 2  # the estimate repeats itself: halve the measured bracket
            keeps = alloc(level)
            if any(t.keeps == keeps for t in trials):
                break
        pruned = build_trial(model, x, plan, keeps)
        check(pruned)
        macs, params = count_macs(pruned, x), count_params(pruned)
        measured = (macs if kind == "macs" else params) / base[kind]
        trials.append(Trial(level, round_to, keeps, macs, params, measured))
        log.info("level %.4f -> measured %s ratio %.4f (target %.4f)", level, kind, measured, ratio)
        if abs(measured / ratio - 1) <= INNER_TOLERANCE or (level >= max_level and measured > ratio):
            break
        if measured > ratio:
            lo = (level, measured) if lo is None or level > lo[0] else lo
        else:
            hi = (level, measured) if hi is None or level < hi[0] else hi
        if lo is not None and hi is not None:  # regula falsi on the measured bracket
            w = (lo[1] - ratio) / max(lo[1] - hi[1], 1e-12)
            level = min(max(lo[0] + w * (hi[0] - lo[0]), lo[0] + 1e-4), hi[0] - 1e-4)
        else:  # correct the estimate's goal by the measured miss (secant step)
            goal = min(max(goal * ratio / measured, 1e-3), 1.0)
            level = _solve(est, goal, max_level)
    best = min(trials, key=lambda t: (abs(t.ratio / ratio - 1), t.ratio))
    return best, trials


def search_latency(model, x, plan, base, ratio, cfg, roundings, check, steps: int = 6) -> tuple[Trial, list[Trial]]:
    """Bisection on measured ONNX Runtime latency ratio, once per candidate rounding."""
    reference = ort_runner(model, x, cfg.latency_threads)
    trials: list[Trial] = []
    for round_to in roundings:
        lo, hi = 0.0, cfg.max_layer_prune
        for _ in range(steps):
            level = (lo + hi) / 2
            trial = _latency_trial(model, x, plan, cfg, round_to, level, reference, base, check)
            trials.append(trial)
            if trial.ratio <= ratio:
                hi = level
            else:
                lo = level
    meeting = [t for t in trials if t.ratio <= ratio * (1 + cfg.tolerance)]
    if not meeting:
        # Out of reach: small models hit a floor (per-call overhead) that deeper cuts do not lower, and on a
        # noisy machine the lowest reading is as likely the deepest cut as any. The lightest cut measured
        # within tolerance of the floor loses the least for the same speed.
        floor = min(t.ratio for t in trials)
        meeting = [t for t in trials if t.ratio <= floor * (1 + cfg.tolerance)]
    return max(meeting, key=lambda t: t.macs), trials


def search_latency_table(model, x, plan, ratio, cfg, path, check, tries: int = 4) -> tuple[Trial, list[Trial]]:
    """Latency target on a per-layer latency table: the point of the table's path predicted at the target is
    pruned and timed interleaved with the original; each measured miss rescales the prediction (measured /
    predicted) to pick the next point, kept inside the measured bracket, for up to `tries` measurements."""
    reference = ort_runner(model, x, cfg.latency_threads)
    points, trials, tried = path.points, [], set()
    lo, hi = 0, len(path.points)  # path indices measured slower than the target / at or below it (exclusive)
    i = path.index(ratio)
    for _ in range(tries):
        keeps, predicted = points[i]
        trial = _timed_trial(model, x, plan, cfg, list(keeps), cfg.round_to or 1, 1.0 - predicted, reference, check)
        trial.predicted = predicted
        trials.append(trial)
        tried.add(i)
        if abs(trial.ratio / ratio - 1) <= INNER_TOLERANCE:
            break
        lo, hi = (max(lo, i), hi) if trial.ratio > ratio else (lo, min(hi, i))
        nxt = min(max(path.index(predicted * ratio / trial.ratio), lo + 1), hi - 1)
        if nxt in tried:
            nxt = (lo + hi) // 2
        if nxt in tried or not lo < nxt < hi:
            break
        i = nxt
    meeting = [t for t in trials if t.ratio <= ratio * (1 + cfg.tolerance)]
    return (max(meeting, key=lambda t: t.macs) if meeting else min(trials, key=lambda t: t.ratio)), trials


def _latency_trial(model, x, plan, cfg, round_to, level, reference, base, check) -> Trial:
    keeps = allocate(plan, level, cfg.allocation, round_to, cfg.max_layer_prune)
    return _timed_trial(model, x, plan, cfg, keeps, round_to, level, reference, check)


def _timed_trial(model, x, plan, cfg, keeps, round_to, level, reference, check) -> Trial:
    """Prune a copy to `keeps`, run it, and time it interleaved with the original (`reference`)."""
    from slimkit.profile.timing import measure_interleaved

    pruned = build_trial(model, x, plan, keeps)
    check(pruned)
    cand = ort_runner(pruned, x, cfg.latency_threads)
    t = measure_interleaved({"ref": reference, "cand": cand}, warmup=3, repetitions=20, rounds=4, min_time_s=0.2)
    measured = t["cand"].median / t["ref"].median
    log.info("round_to %d level %.3f -> latency ratio %.3f", round_to, level, measured)
    return Trial(level, round_to, keeps, count_macs(pruned, x), count_params(pruned), measured)
