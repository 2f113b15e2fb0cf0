"""Cut gradually: prune -> recover -> prune again, the stage count chosen from the size of the cut.

"To prune, or not to prune" (Zhu & Gupta) reaches deep sparsity by small steps with training in
between; here each stage is a structured cut toward goal_i = fraction^(i/k) of the original (made
relative to the current model, so a stage that lands off target is corrected by the next), followed
by a fine-tune that stops when the accuracy is back (slimkit.compress.recover). Every cut tried is
kept as a model, so the report can measure the accuracy-latency curve on ONNX Runtime.

With priority `accuracy`, a stage that ends beyond the limit is undone; one milder cut halfway
(geometrically) between the last good stage and the failed one is tried, and the run keeps the
deepest cut within the limit. With priority `budget` every stage is kept and the drop is reported.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch.nn as nn

__all__ = ["stage_count", "cut_gradually", "MAX_STAGE_CUT"]

MAX_STAGE_CUT = 0.5  # default: no stage keeps less than half of its input's latency / MACs / params


def stage_count(fraction: float, max_stage_cut: float) -> int:
    """Fewest stages such that each keeps at least `max_stage_cut` of its input: ceil(log f / log m)."""
    if fraction >= 1.0:
        return 1
    return max(1, math.ceil(math.log(fraction) / math.log(max_stage_cut) - 1e-9))


def _record(name: str, goal: float, so_far: float, before: float, recovery: dict | None, after: float) -> dict:
    return {"name": name, "goal": goal, "achieved": so_far, "accuracy_cut": before,
            "accuracy": after, "recovery": recovery}


def cut_gradually(ctx: Any, model: nn.Module, fraction: float, stages: int,
                  cut: Callable[[nn.Module, float, bool], tuple[nn.Module, Any]],
                  recover: Callable[[nn.Module], dict] | None) -> tuple[nn.Module, dict[str, Any], dict[str, nn.Module]]:
    """Cut `model` (unchanged) to `fraction` of the original in `stages`; returns (kept model, details, cut models).

    `cut(model, relative_target, so_far, last)` returns (a pruned copy, its PruneResult); `recover(model)`
    fine-tunes in place and returns its record (None: no fine-tuning between cuts).
    """
    from slimkit.compress.recover import val_top1

    limit, baseline = ctx.limit, ctx.baseline_top1()
    kept, kept_goal, so_far, cuts, models, result, stopped = model, 1.0, 1.0, [], {}, None, "done"
    for i in range(1, stages + 1):
        goal = fraction ** (i / stages)
        trial = _try(ctx, kept, f"cut-{i}", goal, so_far, i == stages, cut, recover, val_top1)
        cuts.append(trial["record"])
        models[trial["record"]["name"]] = trial["model"]
        if limit is None or limit.priority == "budget" or recover is None or limit.cut_ok(baseline, trial["accuracy"]):
            kept, kept_goal, so_far, result = trial["model"], goal, trial["so_far"], trial["result"]
            continue
        stopped = f"cut-{i} lost {baseline - trial['accuracy']:.2f} points > {limit.cut_drop:g} allowed to the cuts"
        mid = math.sqrt(kept_goal * goal)
        milder = _try(ctx, kept, f"cut-{i}-milder", mid, so_far, True, cut, recover, val_top1)
        cuts.append(milder["record"])
        models[milder["record"]["name"]] = milder["model"]
        if limit.cut_ok(baseline, milder["accuracy"]):
            kept, kept_goal, so_far, result = milder["model"], mid, milder["so_far"], milder["result"]
        break
    chosen = next((c["name"] for c in cuts if models[c["name"]] is kept), None)
    for c in cuts:
        c["kept"] = c["name"] == chosen
    details = {"stages": stages, "fraction": fraction, "cuts": cuts, "kept": chosen, "stopped": stopped,
               "baseline_top1": baseline, "prune": result.to_dict() if result is not None else None}
    return kept, details, models


def _try(ctx, start: nn.Module, name: str, goal: float, so_far: float, last: bool, cut, recover,
         val_top1) -> dict[str, Any]:
    """One cut from `start` (at `so_far` of the original) toward `goal` of the original, then its recovery."""
    relative = min(goal / so_far, 0.999)
    ctx.say(f"{name}: pruning to {goal:.3f} of the original ({relative:.3f} of the current model)")
    pruned, result = cut(start, relative, so_far, last)
    achieved = result.achieved if result.achieved is not None else relative
    before = val_top1(ctx, pruned)
    record = recover(pruned) if recover is not None else None
    after = record["accuracy"] if record is not None else before
    ctx.say(f"{name}: top-1 {before:.2f} after the cut, {after:.2f} after fine-tuning"
            + (f" ({record['epochs']} epochs, stopped: {record['stopped']})" if record else ""))
    return {"model": pruned, "result": result, "so_far": so_far * achieved, "accuracy": after,
            "record": _record(name, goal, so_far * achieved, before, record, after)}
