"""`search run`: evolve children of a trained supernet against a latency table, confirm winners by measuring
them, and write each chosen child as an ordinary model directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from slimkit.errors import BadInputError
from slimkit.search.evaluate import ChildEvaluator, save_child
from slimkit.search.evolution import REWARDS, Candidate, EvolutionConfig, evolve, pareto_front
from slimkit.search.latency import measure_children
from slimkit.search.table import LatencyTable
from slimkit.search.train import load_supernet

__all__ = ["run_search", "RESULTS_FILE"]

log = logging.getLogger(__name__)

RESULTS_FILE = "search.json"


def _confirm(table: LatencyTable, chosen: list[Candidate], threads: int, target: float, reward: str,
             w: float) -> list[dict[str, Any]]:
    """Measure the chosen children now (exported, ONNX Runtime, interleaved) next to their predictions."""
    timings = measure_children(table.space, [c.arch for c in chosen], threads)
    score = REWARDS.get(reward)
    rows = []
    for c, t in zip(chosen, timings):
        m = getattr(t, f"{table.statistic}_ms")  # the statistic the table predicts
        rows.append({**c.to_dict(), "measured_ms": m, "statistic": table.statistic, "measured_median_ms": t.median_ms,
                     "measured_min_ms": t.min_ms, "prediction_error": c.latency_ms / m - 1.0,
                     "measured_reward": score(c.accuracy, m, target, w), "meets_target": m <= target})
    return rows


def run_search(run_dir: str | Path, table: LatencyTable, data: Any, target_ms: float, out: str | Path, *,
               reward: str = "mnasnet", w: float = -0.07, pareto: bool = False, confirm: int = 3,
               evolution: EvolutionConfig | None = None, threads: int | None = None, val_samples: int | None = None,
               calib_batches: int = 8, progress: Callable[[int, int], None] | None = None,
               workers: int = 1) -> dict[str, Any]:
    """Search the supernet in `run_dir` (unchanged); writes OUT/search.json and OUT/child_*/ model dirs."""
    from slimkit.utils.io import atomic_write_json

    REWARDS.get(reward)
    net, info = load_supernet(run_dir)
    table.check_space(net.space)
    threads = int(threads or table.conditions["threads"])
    mismatches = table.check_conditions(threads)
    cfg = evolution or EvolutionConfig()
    evaluator = ChildEvaluator(net, data, calib_batches=calib_batches, val_samples=val_samples, seed=cfg.seed)
    found = evolve(net.space, evaluator.accuracy, table.predict_ms, target_ms, reward=reward, w=w, config=cfg,
                   progress=progress, workers=workers)
    front = pareto_front(found)
    chosen = front if pareto else found[: max(1, confirm)]
    confirmed = _confirm(table, chosen, threads, target_ms, reward, w)
    if not pareto:  # the winner is the best reward on measured latency among the confirmed ones
        confirmed.sort(key=lambda r: -r["measured_reward"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(confirmed):
        arch = next(c.arch for c in chosen if c.arch.model_dump() == row["arch"])
        row["model_dir"] = str(out / f"child_{i}")
        save_child(evaluator.child(arch), info, row["model_dir"],
                   {"search": {k: v for k, v in row.items() if k != "model_dir"}, "supernet": str(run_dir)})
        if pareto is False:
            break
    result = {"target_ms": target_ms, "reward": reward, "w": w, "pareto": pareto, "evolution": cfg.to_dict(),
              "threads": threads, "workers": workers, "table_conditions": table.conditions, "condition_mismatches": mismatches,
              "evaluated": len(found), "val_samples": len(evaluator.val),
              "winners": confirmed if pareto else confirmed[:1], "confirmed": confirmed,
              "front": [c.to_dict() for c in front], "candidates": [c.to_dict() for c in found]}
    atomic_write_json(out / RESULTS_FILE, result)
    return result


def parse_latency(text: str) -> float:
    """'2ms', '2.5 ms', '800us', '0.002s' or a bare number of milliseconds -> milliseconds."""
    value = str(text).strip().lower().replace(" ", "")
    for suffix, scale in (("ms", 1.0), ("us", 1e-3), ("µs", 1e-3), ("s", 1e3)):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], scale
            break
    else:
        factor = 1.0
    try:
        ms = float(value) * factor
    except ValueError:
        raise BadInputError(f"cannot read latency {text!r}: give e.g. 2ms, 800us or 0.002s") from None
    if not ms > 0:
        raise BadInputError(f"latency target must be positive, got {text!r}")
    return ms
