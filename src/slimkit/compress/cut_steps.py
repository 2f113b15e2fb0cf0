"""The prune and finetune steps of compress: cuts in stages toward the budget, and fine-tuning until accuracy is back.

With a finetune step in the recipe, the prune step cuts gradually (slimkit.compress.gradual), fine-tuning after
each cut (slimkit.compress.recover); the finetune step then tops the recovery up only where it is not done.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimkit.compress.recipe import register_step
from slimkit.compress.steps import (_NOT_PRUNE_CONFIG, CEILING_RETRIES, SKIP_CUT, TARGET_MARGIN, RunContext, StepResult,
                                    _check_finetune, _check_prune, _last_step, _prune_target)

__all__ = ["prune_step", "finetune_step"]


def _calibration(ctx: RunContext, config):
    from slimkit.compress.prune.criteria import Calibration, criterion_needs_data

    if not criterion_needs_data(config.criterion):
        return None
    x, y = ctx.data.train.tensors()
    return Calibration([(x[i : i + 64], y[i : i + 64]) for i in range(0, min(len(y), 256), 64)])


def _cut(ctx: RunContext, model: nn.Module, config, calib, ceiling: float | None, derivation: dict):
    """A pruned copy of `model` toward config.target; a macs/params `ceiling` (of this model) is re-aimed at."""
    from slimkit.compress.prune import prune_

    for attempt in range(CEILING_RETRIES):
        pruned = copy.deepcopy(model)
        result = prune_(pruned, config, torch.randn(1, *ctx.input_size), calib, data=ctx.data)
        if ceiling is None or result.achieved <= ceiling or attempt == CEILING_RETRIES - 1:
            return pruned, result, config
        # the pruner lands within its tolerance of the target, on either side: aim lower so the ceiling holds
        aim = config.parsed_target.ratio * ceiling / result.achieved * TARGET_MARGIN
        ctx.say(f"pruned to {result.achieved:.3f} of the {ctx.budget.kind}, above the budget {ceiling:g}: retrying at {aim:.3f}")
        derivation.setdefault("retries", []).append({"target": config.target, "achieved": result.achieved})
        config = dataclasses.replace(config, target=f"{ctx.budget.kind}={aim:g}")
    raise AssertionError("unreachable")


def _fraction_of(ctx: RunContext, model: nn.Module, reference: nn.Module, kind: str) -> float:
    """`model`'s MACs, params or measured ONNX Runtime latency as a fraction of `reference`'s."""
    from slimkit.compress.gradual import latency_ratio
    from slimkit.compress.prune.measure import count_macs, count_params

    if model is reference:
        return 1.0
    if kind == "latency":
        return latency_ratio(ctx, model, reference)
    x = torch.randn(1, *ctx.input_size)
    count = (lambda m: count_macs(m, x)) if kind == "macs" else count_params
    return count(model) / count(reference)


@register_step("prune", check=_check_prune)
def prune_step(ctx: RunContext, model: nn.Module, params: dict[str, Any], work: Path) -> StepResult:
    """Cut toward the budget: in stages with a fine-tune after each when the recipe fine-tunes, else in one go."""
    from slimkit.compress.gradual import MAX_STAGE_CUT, cut_gradually, stage_count
    from slimkit.compress.prune import PruneConfig
    from slimkit.compress.recover import recover_

    target, derivation = _prune_target(ctx, params)
    config = PruneConfig(target=target, latency_threads=ctx.threads, seed=ctx.seed,
                         **{k: v for k, v in params.items() if k not in _NOT_PRUNE_CONFIG})
    # A latency budget past what pruning can reach keeps the lightest cut at the floor: the report says the budget was missed
    # and the curve shows what each cut cost, where failing would throw away the baseline's training.
    config = dataclasses.replace(config, closest=True)
    calib = _calibration(ctx, config)
    ceiling = ctx.budget.fraction if derivation["from"] == "budget" and ctx.budget.kind in ("macs", "params") else None
    gradual = (bool(params.get("gradual", True)) and ctx.finetune_params is not None and config.schedule == "oneshot"
               and not config.epochs)
    if not gradual:  # no fine-tune in the recipe, or a schedule of the pruner's own: one cut, as configured
        ctx.say(f"pruning toward {config.target} ({config.schedule}, {config.criterion}, round to {config.round_to})")
        pruned, result, config = _cut(ctx, model, config, calib, ceiling, derivation)
        return StepResult(pruned, details={"prune": result.to_dict(), "config": config.to_dict(), "target_from": derivation})
    kind, fraction = config.parsed_target.kind, config.parsed_target.ratio
    if kind != "latency":
        # Counted targets are cheap to try whole: an out-of-reach budget fails now, not after stages of fine-tuning.
        _cut(ctx, model, config, calib, None, {})
    stages = stage_count(fraction, float(params.get("max_stage_cut", MAX_STAGE_CUT)))
    ctx.say(f"pruning toward {config.target} in {stages} stage(s), fine-tuning after each ({config.criterion}, "
            f"round to {config.round_to})")

    def cut(start: nn.Module, goal: float, last: bool):
        now = kind if last or kind != "latency" else "macs"  # MACs waypoints before a latency budget's last cut
        current = _fraction_of(ctx, start, model, now)
        if goal / current > SKIP_CUT:
            return None
        stage = dataclasses.replace(config, target=f"{now}={goal / current:.6f}")
        pruned, result, _ = _cut(ctx, start, stage, calib, ceiling / current if ceiling and last else None, derivation)
        return pruned, result

    kept, details, cuts = cut_gradually(ctx, model, fraction, stages, cut,
                                        lambda m: recover_(ctx, m, ctx.finetune_params))
    return StepResult(kept, extra_models=cuts, details={**details, "config": config.to_dict(), "target_from": derivation,
                                                        "gradual": True})


@register_step("finetune", check=_check_finetune)
def finetune_step(ctx: RunContext, model: nn.Module, params: dict[str, Any], work: Path) -> StepResult:
    """Top up the recovery until the accuracy is back: skipped when it already is, or when the last one plateaued."""
    from slimkit.compress.recover import recover_, val_top1

    target = ctx.limit.finetune_target(ctx.baseline_top1()) if ctx.limit is not None else None
    current = val_top1(ctx, model)
    prune = _last_step(ctx, "prune")
    cuts = [c for c in (prune[1].get("details", {}).get("cuts") or []) if c.get("kept")] if prune else []
    last = cuts[-1]["recovery"] if cuts else None
    if target is not None and current >= target:
        skipped = f"top-1 {current:.2f} is already within the limit (target {target:.2f})"
    elif last is not None and last.get("stopped") == "patience":
        skipped = f"the fine-tune after the last cut had plateaued at {last['accuracy']:.2f}"
    else:
        skipped = None
    if skipped:
        ctx.say(f"fine-tuning skipped: {skipped}")
        return StepResult(model, details={"skipped": skipped, "accuracy": current, "target": target})
    ctx.say(f"fine-tuning up to {params.get('epochs', 'the default')} epochs toward top-1 "
            f"{'%.2f' % target if target is not None else '(plateau)'}")
    record = recover_(ctx, model, params, work)
    return StepResult(model, details=record)
