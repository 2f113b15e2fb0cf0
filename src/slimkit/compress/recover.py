"""Fine-tuning that stops when the accuracy is back: at the limit's target, on a plateau, or at an epoch cap.

Training goes through engine.fit with early stopping (the best epoch is kept) and, by default,
distillation from the trained original. Used after each cut of the prune step and by the finetune step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

__all__ = ["recover_", "val_top1", "RECOVER_KEYS", "DEFAULT_PATIENCE"]

DEFAULT_PATIENCE = 2
RECOVER_KEYS = {"patience", "min_delta"}  # the early-stopping knobs a recipe's train/finetune step may set


def val_top1(ctx: Any, model: nn.Module) -> float:
    """The model's top-1 (points, torch fp32) on the run's val split."""
    from slimkit.engine import evaluate

    return 100.0 * evaluate(model, ctx.data.val)["top1"]


def recover_(ctx: Any, model: nn.Module, params: dict[str, Any], work: Path | None = None) -> dict[str, Any]:
    """Fine-tune `model` in place until val top-1 reaches the limit's target, plateaus or hits `epochs`.

    Returns what happened: epochs run, why it stopped, the kept (best) accuracy in points.
    """
    from slimkit.compress.distill.self_distill import SelfDistill
    from slimkit.compress.steps import _TRAIN_KEYS, _train_config
    from slimkit.engine import fit

    distill = bool(params.get("distill", True)) and ctx.original is not None
    loss = SelfDistill(ctx.original, temperature=params.get("temperature", 4.0),
                       alpha=params.get("alpha", 0.5)) if distill else None
    target = ctx.limit.finetune_target(ctx.baseline_top1()) if ctx.limit is not None else None
    # patience: null in a recipe asks for fixed epochs (no early stopping, no target): the pipeline of old
    fixed = "patience" in params and params["patience"] is None
    config = _train_config(ctx, {"patience": DEFAULT_PATIENCE, **{k: v for k, v in params.items() if k in _TRAIN_KEYS}})
    if not fixed:
        config = config.replace(keep_best=True, target_accuracy=None if target is None else
                                min(1.0, max(1e-6, target / 100.0)))
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    result = fit(model, ctx.data, config, out_dir=work, resume=work is not None and (work / "checkpoint.safetensors").is_file(),
                 loss_fn=loss, info=ctx.info)
    stopping = result.metrics["early_stopping"]
    return {"epochs": result.epochs_completed, "cap": config.epochs, "distill": distill, "target": target,
            "accuracy": 100.0 * result.metrics["accuracy"], "stopped": stopping["stopped"],
            "best_epoch": stopping["best_epoch"], "converged": stopping["converged"]}
