"""Interleaved latency measurement: the only honest way to compare speeds on a shared machine.

Candidates are timed in alternating rounds (A, B, C, A, B, C, ...) after a warm-up,
so drift from other load on the machine hits every candidate alike. Results carry
their conditions: repetitions, threads and spread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, asdict
from typing import Callable

__all__ = ["Timing", "measure_interleaved", "summarize"]


@dataclass
class Timing:
    """Per-call latency statistics in milliseconds."""

    median: float
    p90: float
    min: float
    max: float
    iqr: float  # interquartile range: the spread reported next to the median
    repetitions: int

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(samples_ms: list[float]) -> Timing:
    ordered = sorted(samples_ms)
    n = len(ordered)
    if n == 0:
        raise ValueError("no timing samples")
    q = statistics.quantiles(ordered, n=10, method="inclusive") if n > 1 else [ordered[0]] * 9
    quart = statistics.quantiles(ordered, n=4, method="inclusive") if n > 1 else [ordered[0]] * 3
    return Timing(statistics.median(ordered), q[8], ordered[0], ordered[-1], quart[2] - quart[0], n)


def measure_interleaved(
    candidates: dict[str, Callable[[], object]],
    *,
    warmup: int = 5,
    repetitions: int = 30,
    rounds: int = 5,
    min_time_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time each zero-argument callable; `repetitions` calls each, split over `rounds` alternating rounds.

    `min_time_s` raises the repetitions until each candidate has run about that long, so
    sub-millisecond models get enough samples. `clock` is injectable for tests.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, repetitions // max(1, rounds))
    if min_time_s > 0:
        slowest = max(_one_call(fn, clock) for fn in candidates.values())
        per_round = max(per_round, int(min_time_s / max(slowest, 1e-6) / rounds) + 1)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            for _ in range(per_round):
                start = clock()
                fn()
                samples[name].append((clock() - start) * 1e3)
    return {name: summarize(values) for name, values in samples.items()}


def _one_call(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    fn()
    return clock() - start
