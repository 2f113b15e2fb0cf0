"""Training inside pruning (fine-tuning, iterative schedules, LAPP) through the one training loop, engine.fit.

Pruning jobs count training in epochs that may be fractional (0.5 = half a pass), so a
run is `max_steps` optimizer steps; SGD with momentum and a cosine schedule, as is usual
for recovering a pruned CNN. Distillation from the unpruned model uses the shared
softened-KL loss (slimkit.compress.distill.LogitKD).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch.nn as nn
from torch.utils.data import Dataset

__all__ = ["finetune", "calibration_batches"]


def finetune(
    model: nn.Module,
    train: Dataset,
    epochs: float,
    *,
    lr: float = 0.01,
    batch_size: int = 64,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.5,
    hooks: Sequence[Any] = (),
    seed: int = 0,
    val: Dataset | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `model` in place for `epochs` (fractions allowed); `teacher` adds KD. Returns steps and last loss."""
    from slimkit.compress.distill import LogitKD
    from slimkit.engine import TrainConfig, TrainData, device_of, fit

    per_epoch = math.ceil(len(train) / batch_size)
    steps = max(1, math.ceil(epochs * per_epoch))
    config = TrainConfig(epochs=math.ceil(steps / per_epoch), max_steps=steps, batch_size=batch_size,
                         optimizer="sgd", lr=lr, momentum=0.9, weight_decay=1e-4, seed=seed, device=device_of(model))
    loss = LogitKD(teacher, temperature=4.0, alpha=kd_alpha) if teacher is not None else None
    result = fit(model, TrainData(train, val), config, hooks=list(hooks), loss_fn=loss, progress=progress)
    return {"steps": steps, "loss": result.history[-1]["train_loss"], "accuracy": result.metrics["accuracy"]}


def calibration_batches(dataset: Dataset, batches: int, batch_size: int = 32, seed: int = 0) -> list[tuple]:
    """The first `batches` shuffled (inputs, labels) batches of `dataset`, for data-driven criteria."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    out = []
    for xb, yb in loader:
        if len(out) >= batches:
            break
        out.append((xb, yb))
    return out
