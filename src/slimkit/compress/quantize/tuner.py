"""Quantune-style auto-tuning: a gradient-boosted-trees surrogate picks which quantization configs to evaluate.

Search space: calibration method x weight granularity x activation scheme x how many of the most
sensitive layers stay float. Each evaluation (build + accuracy + latency) is costly, so after a few
random configs, scikit-learn GradientBoostingRegressors are fit on what was seen: a small bootstrap
ensemble for accuracy (its spread is the surrogate's uncertainty) and one for latency. The next config
is the one with the best optimistic outcome (accuracy mean + kappa * spread), so configs near the
accuracy limit get checked rather than ruled out by a noisy guess. The search stops when no unseen
config can beat the incumbent even optimistically, after `patience` evaluations without improvement,
or when the budget is spent. The goal is the stated trade-off: the fastest
config whose accuracy drop is within `max_drop` (ties: the more accurate); if none is, the most accurate.
`grid_search` evaluates everything, for comparison; both report their evaluation counts.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

__all__ = ["TuneSpace", "Trial", "TuneResult", "tune", "grid_search", "pick_best", "pareto_front"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneSpace:
    methods: tuple[str, ...] = ("minmax", "percentile", "entropy")
    per_channel: tuple[bool, ...] = (True, False)
    symmetric_activations: tuple[bool, ...] = (False, True)
    float_layers: tuple[int, ...] = (0, 1, 2, 4)  # keep the k most sensitive layers float

    def grid(self) -> list[dict]:
        keys = ("method", "per_channel", "symmetric_activations", "float_layers")
        values = (self.methods, self.per_channel, self.symmetric_activations, self.float_layers)
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]

    def features(self, config: dict) -> list[float]:
        onehot = [float(config["method"] == m) for m in self.methods]
        return onehot + [float(config["per_channel"]), float(config["symmetric_activations"]), float(config["float_layers"])]


@dataclass
class Trial:
    config: dict
    accuracy: float
    latency: float  # ms, or int8/fp32 latency ratio: lower is better
    order: int  # 1-based evaluation number

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TuneResult:
    best: Trial
    trials: list[Trial]
    grid_size: int
    strategy: str
    pareto: list[Trial] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return len(self.trials)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "evaluations": self.evaluations, "grid_size": self.grid_size,
                "best": self.best.to_dict(), "pareto": [t.to_dict() for t in self.pareto],
                "trials": [t.to_dict() for t in self.trials]}


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """Trials no other trial beats on both accuracy (higher) and latency (lower)."""
    front = [t for t in trials if not any(
        o.accuracy >= t.accuracy and o.latency <= t.latency and (o.accuracy > t.accuracy or o.latency < t.latency)
        for o in trials)]
    return sorted(front, key=lambda t: t.latency)


def pick_best(trials: Sequence[Trial], reference_accuracy: float, max_drop: float) -> Trial:
    feasible = [t for t in trials if reference_accuracy - t.accuracy <= max_drop]
    if feasible:
        return min(feasible, key=lambda t: (t.latency, -t.accuracy, t.order))
    return max(trials, key=lambda t: (t.accuracy, -t.latency, -t.order))


def grid_search(space: TuneSpace, evaluate: Callable[[dict], tuple[float, float]], reference_accuracy: float,
                max_drop: float) -> TuneResult:
    trials = [Trial(c, *evaluate(c), i + 1) for i, c in enumerate(space.grid())]
    return TuneResult(pick_best(trials, reference_accuracy, max_drop), trials, len(trials), "grid", pareto_front(trials))


def _utility(acc: np.ndarray, lat: np.ndarray, reference_accuracy: float, max_drop: float, scale: float) -> np.ndarray:
    drop = reference_accuracy - acc
    # Feasible configs rank by speed; infeasible ones rank below all of them, by how far they miss.
    return np.where(drop <= max_drop, -lat / scale, -2.0 - (drop - max_drop))


def _fit_predict(X: np.ndarray, acc: np.ndarray, lat: np.ndarray, Xq: np.ndarray, seed: int, members: int = 5):
    """(accuracy mean, accuracy spread, latency) predicted for Xq by gradient-boosted trees."""
    from sklearn.ensemble import GradientBoostingRegressor

    def gbt(s: int) -> GradientBoostingRegressor:
        return GradientBoostingRegressor(n_estimators=30, max_depth=2, learning_rate=0.3, random_state=s)

    rng = np.random.default_rng(seed)
    preds = []
    for m in range(members):
        rows = rng.integers(0, len(X), len(X))  # bootstrap resample
        preds.append(gbt(seed + m).fit(X[rows], acc[rows]).predict(Xq))
    preds = np.array(preds)
    return preds.mean(0), preds.std(0), gbt(seed).fit(X, lat).predict(Xq)


def tune(
    space: TuneSpace,
    evaluate: Callable[[dict], tuple[float, float]],
    reference_accuracy: float,
    max_drop: float,
    *,
    budget: int | None = None,
    initial: int = 6,
    patience: int = 10,
    kappa: float = 3.0,
    optimistic_stop: bool = True,
    seed: int = 0,
) -> TuneResult:
    """Surrogate-guided search; `evaluate(config) -> (accuracy, latency)`."""
    grid = space.grid()
    budget = min(len(grid), budget or math.ceil(len(grid) / 2))
    feats = np.array([space.features(c) for c in grid])
    order = list(np.random.default_rng(seed).permutation(len(grid)))
    seen: dict[int, Trial] = {}

    def run(i: int) -> Trial:
        seen[i] = Trial(grid[i], *evaluate(grid[i]), len(seen) + 1)
        return seen[i]

    for i in order[: min(initial, budget)]:
        run(int(i))
    stale = 0
    while len(seen) < budget and stale < patience:
        idx = sorted(seen)
        acc, lat = np.array([seen[i].accuracy for i in idx]), np.array([seen[i].latency for i in idx])
        rest = [i for i in range(len(grid)) if i not in seen]
        mean, spread, lat_pred = _fit_predict(feats[idx], acc, lat, feats[rest], seed + len(seen))
        scale = max(float(np.abs(lat).max()), 1e-12)
        util = _utility(mean + kappa * spread, lat_pred, reference_accuracy, max_drop, scale)
        before = pick_best(list(seen.values()), reference_accuracy, max_drop)
        incumbent = _utility(np.array([before.accuracy]), np.array([before.latency]), reference_accuracy, max_drop, scale)
        if optimistic_stop and util.max() <= incumbent[0]:
            break  # nothing unseen can beat the incumbent, even optimistically
        after = pick_best(list(seen.values()) + [run(rest[int(np.argmax(util))])], reference_accuracy, max_drop)
        stale = stale + 1 if after is before else 0
    trials = sorted(seen.values(), key=lambda t: t.order)
    best = pick_best(trials, reference_accuracy, max_drop)
    log.info("quantune: %d of %d configs evaluated", len(trials), len(grid))
    return TuneResult(best, trials, len(grid), "quantune-gbt", pareto_front(trials))
