"""Iterative prune -> fine-tune schedules, with distillation from the unpruned model as an option.

The budget is approached in `steps` stages on a geometric schedule of the remaining fraction
(stage i keeps target^(i/steps) of the original), each stage pruned with `prune_` (target made
relative to the current model) and then fine-tuned; with `kd`, the loss mixes cross-entropy
with Hinton's KD loss against the original, unpruned model. Training runs through engine.fit.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from slimkit.compress.prune.api import prune_
from slimkit.compress.prune.config import PruneConfig
from slimkit.compress.prune.criteria import Calibration
from slimkit.compress.prune.measure import count_macs, count_params
from slimkit.compress.prune.training import finetune
from slimkit.errors import BadInputError

__all__ = ["iterative_prune_"]


def _quantity(model: nn.Module, x: torch.Tensor, kind: str) -> float:
    return float(count_macs(model, x) if kind == "macs" else count_params(model))


def iterative_prune_(
    model: nn.Module,
    config: PruneConfig,
    example_inputs: torch.Tensor,
    train: Dataset,
    *,
    steps: int = 3,
    epochs_per_step: float = 1.0,
    kd: bool = True,
    lr: float = 0.01,
    val: Dataset | None = None,
    calib: Calibration | None = None,
) -> list[dict[str, Any]]:
    """Prune `model` in place in `steps` stages to `config`'s MACs/params target, fine-tuning after each."""
    target = config.parsed_target
    if target is None or target.kind == "latency":
        raise BadInputError("iterative pruning needs a macs= or params= target")
    if steps < 1:
        raise BadInputError("steps must be >= 1")
    x = example_inputs[:1]
    teacher = copy.deepcopy(model).eval() if kd else None
    original = _quantity(model, x, target.kind)
    history = []
    for step in range(1, steps + 1):
        goal = target.ratio ** (step / steps)  # fraction of the original after this stage
        relative = goal * original / _quantity(model, x, target.kind)
        if relative < 1.0 - 1e-6:
            stage = replace(config, target=f"{target.kind}={min(relative, 0.999999):.6f}")
            prune_(model, stage, x, calib)
        info = finetune(model, train, epochs_per_step, lr=lr, teacher=teacher, val=val, seed=config.seed + step)
        history.append({"step": step, "ratio": _quantity(model, x, target.kind) / original, "loss": info["loss"],
                        "accuracy": info["accuracy"]})
    return history
