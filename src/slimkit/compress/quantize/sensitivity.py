"""Per-layer sensitivity and mixed precision: keep the layers int8 hurts most in float, under an accuracy-drop limit.

Sensitivity of a layer = the output error when only that layer is int8:
mean((logits_int8 - logits_fp32)^2) / mean(logits_fp32^2) on calibration images (no labels needed).
Then the k most sensitive layers stay in float, with the smallest k whose measured top-1 drop on
labelled data is within `max_drop` (found by doubling k, then bisecting: O(log n) evaluations).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from slimkit.compress.quantize.ort_eval import predict
from slimkit.compress.quantize.ptq import QuantSettings

__all__ = ["layer_sensitivity", "keep_sensitive_float", "MixedPrecisionResult"]

log = logging.getLogger(__name__)


def layer_sensitivity(
    build: Callable[[QuantSettings], Path],
    settings: QuantSettings,
    layers: Sequence[str],
    x: np.ndarray,
    reference: np.ndarray,
) -> list[tuple[str, float]]:
    """(layer, relative output error when only it is int8), most sensitive first."""
    power = float(np.mean(reference.astype(np.float64) ** 2)) or 1.0
    scores = []
    for name in layers:
        path = build(replace(settings, only=frozenset([name]), exclude=frozenset()))
        out = predict(path, x)
        scores.append((name, float(np.mean((out.astype(np.float64) - reference) ** 2)) / power))
    return sorted(scores, key=lambda s: -s[1])


@dataclass
class MixedPrecisionResult:
    settings: QuantSettings
    float_layers: list[str] = field(default_factory=list)
    accuracy: float = float("nan")
    met: bool = True
    evaluations: list[dict] = field(default_factory=list)  # {"float_layers": k, "accuracy": a}


def keep_sensitive_float(
    build: Callable[[QuantSettings], Path],
    settings: QuantSettings,
    ranking: Sequence[str],
    evaluate: Callable[[Path], float],
    fp32_accuracy: float,
    max_drop: float,
) -> MixedPrecisionResult:
    """Smallest k such that keeping the k most sensitive layers float meets `max_drop` (top-1 points)."""
    cache: dict[int, float] = {}

    def acc(k: int) -> float:
        if k not in cache:
            cache[k] = evaluate(build(settings.with_exclude(ranking[:k])))
        return cache[k]

    ok = lambda k: fp32_accuracy - acc(k) <= max_drop  # noqa: E731
    n = len(ranking)
    lo, hi = 0, None
    if ok(0):
        hi = 0
    k = 1
    while hi is None and k < n:
        if ok(k):
            hi = k
        else:
            lo, k = k, k * 2
    if hi is None:
        hi = n if n and ok(n) else None
    if hi is None:  # even all-float weighted layers miss the limit: hand back the most accurate tried
        best = max(cache, key=lambda kk: cache[kk])
        result = _result(settings, ranking, best, cache, met=False)
        log.warning("no mixed-precision split meets max drop %.2f; best tried keeps %d layers float", max_drop, best)
        return result
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return _result(settings, ranking, hi, cache, met=True)


def _result(settings: QuantSettings, ranking: Sequence[str], k: int, cache: dict[int, float], met: bool) -> MixedPrecisionResult:
    return MixedPrecisionResult(
        settings.with_exclude(ranking[:k]), list(ranking[:k]), cache[k], met,
        [{"float_layers": kk, "accuracy": a} for kk, a in sorted(cache.items())],
    )
