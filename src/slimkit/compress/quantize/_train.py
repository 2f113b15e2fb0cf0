"""A minimal fine-tuning loop shared by QAT and codebook compression.

Deliberately small: once slimkit.engine.fit lands, these techniques plug in as a loss hook there.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from slimkit.errors import SlimkitError

__all__ = ["finetune"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, epochs: int, lr: float,
             batch_size: int, teacher: nn.Module | None = None, seed: int = 0) -> list[float]:
    """Adam over (x, y) in shuffled batches, model changed in place; returns the mean loss per epoch."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    history = []
    for _ in range(epochs):
        model.train()
        order, total = torch.randperm(len(y), generator=gen), 0.0
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            with torch.no_grad():
                t_out = teacher(x[idx]) if teacher is not None else None
            loss = loss_fn(model(x[idx]), y[idx], t_out)
            if not torch.isfinite(loss):
                raise SlimkitError(f"fine-tuning loss became {loss.item()}; lower the learning rate")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / len(y))
    model.eval()
    return history
