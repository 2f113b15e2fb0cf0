"""Optimizer and learning-rate schedule (linear warm-up, then cosine decay, stepped per batch)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn

from slimkit.engine.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def _param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    # Biases and norm scales (1-d tensors) are not decayed: decaying them only hurts accuracy.
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """A new AdamW or SGD optimizer over the trainable `params`."""
    groups = _param_groups(params, config.weight_decay)
    if not groups:
        from slimkit.errors import BadInputError

        raise BadInputError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=False)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=False)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """A LambdaLR stepped once per batch; its state is just the step count."""
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    min_ratio = config.min_lr / config.lr

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, config.schedule, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
