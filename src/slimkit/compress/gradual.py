"""Cut gradually: prune -> recover -> prune again, the stage count chosen from the size of the cut.

"To prune, or not to prune" (Zhu & Gupta) reaches deep sparsity by small steps with training in
between; here each stage is a structured cut toward goal_i = fraction^(i/k) of the original (made
relative to the current model, so a stage that lands off target is corrected by the next), followed
by a fine-tune that stops when the accuracy is back (slimkit.compress.recover). For a latency budget
the stages before the last aim at MACs waypoints (a latency search per stage costs minutes on a busy
CPU); the last stage searches on measured ONNX Runtime latency, from the measured ratio reached so far.
Every cut tried is kept as a model, so the report measures the accuracy-latency curve on ONNX Runtime.

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
    """Fewest stages such that each keeps about `max_stage_cut` of its input or more: ceil(log f / log m),
    with a tenth of a stage of slack so that a cut just past a whole number of stages takes no extra one."""
    if fraction >= 1.0:
        return 1
    return max(1, math.ceil(math.log(fraction) / math.log(max_stage_cut) - 0.1))


def latency_ratio(ctx: Any, model: nn.Module, reference: nn.Module) -> float:
    """ONNX Runtime median latency of `model` over `reference`'s, timed interleaved in one run."""
    import tempfile
    from pathlib import Path

    import torch

    from slimkit.deploy.onnx_export import ort_session
    from slimkit.profile.latency import export_for_timing
    from slimkit.profile.timing import measure_interleaved

    example = torch.randn(1, *ctx.input_size)
    with tempfile.TemporaryDirectory(prefix="slimkit-ratio-") as tmp:
        calls = {}
        for name, m in (("model", model), ("reference", reference)):
            session = ort_session(export_for_timing(m, example, Path(tmp) / f"{name}.onnx"), ctx.threads)
            feed = {session.get_inputs()[0].name: example.numpy()}
            calls[name] = lambda s=session, f=feed: s.run(None, f)
        timings = measure_interleaved(calls, warmup=5, repetitions=30, rounds=5, min_time_s=0.5)
    return timings["model"].median / timings["reference"].median


def cut_gradually(ctx: Any, model: nn.Module, fraction: float, stages: int,
                  cut: Callable[[nn.Module, float, bool], tuple[nn.Module, Any] | None],
                  recover: Callable[[nn.Module], dict] | None) -> tuple[nn.Module, dict[str, Any], dict[str, nn.Module]]:
    """Cut `model` (unchanged) to `fraction` of the original in `stages`; returns (kept model, details, cut models).

    `cut(model, goal, last)` returns (a pruned copy at about `goal` of the original, its PruneResult), or None
    when the model is already there; `recover(model)` fine-tunes in place and returns its record.
    """
    limit, baseline = ctx.limit, ctx.baseline_top1()
    kept, kept_goal, cuts, models, result, stopped = model, 1.0, [], {}, None, "done"
    for i in range(1, stages + 1):
        goal = fraction ** (i / stages)
        trial = _try(ctx, kept, f"cut-{i}", goal, i == stages, cut, recover)
        if trial is None:
            continue
        cuts.append(trial["record"])
        models[trial["record"]["name"]] = trial["model"]
        if limit is None or limit.priority == "budget" or recover is None or limit.cut_ok(baseline, trial["accuracy"]):
            kept, kept_goal, result = trial["model"], goal, trial["result"]
            continue
        stopped = f"cut-{i} lost {baseline - trial['accuracy']:.2f} points > {limit.cut_drop:g} allowed to the cuts"
        milder = _try(ctx, kept, f"cut-{i}-milder", math.sqrt(kept_goal * goal), True, cut, recover)
        if milder is not None:
            cuts.append(milder["record"])
            models[milder["record"]["name"]] = milder["model"]
            if limit.cut_ok(baseline, milder["accuracy"]):
                kept, result = milder["model"], milder["result"]
        break
    chosen = next((c["name"] for c in cuts if models[c["name"]] is kept), None)
    for c in cuts:
        c["kept"] = c["name"] == chosen
    details = {"stages": stages, "fraction": fraction, "cuts": cuts, "kept": chosen, "stopped": stopped,
               "baseline_top1": baseline, "prune": result.to_dict() if result is not None else None}
    return kept, details, models


def _try(ctx, start: nn.Module, name: str, goal: float, last: bool, cut, recover) -> dict[str, Any] | None:
    """One cut from `start` toward `goal` of the original, then its recovery; None when nothing was left to cut."""
    from slimkit.compress.recover import val_top1

    ctx.say(f"{name}: pruning to {goal:.3f} of the original")
    done = cut(start, goal, last)
    if done is None:
        ctx.say(f"{name}: the model is already at {goal:.3f} of the original; nothing to cut")
        return None
    pruned, result = done
    before = val_top1(ctx, pruned)
    record = recover(pruned) if recover is not None else None
    after = record["accuracy"] if record is not None else before
    ctx.say(f"{name}: top-1 {before:.2f} after the cut, {after:.2f} after fine-tuning"
            + (f" ({record['epochs']} epochs, stopped: {record['stopped']})" if record else ""))
    return {"model": pruned, "result": result, "accuracy": after,
            "record": {"name": name, "goal": goal, "target": result.target, "achieved_of_input": result.achieved,
                       "accuracy_cut": before, "accuracy": after, "recovery": record}}
