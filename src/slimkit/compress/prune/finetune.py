"""A minimal fine-tune loop (with optional distillation) behind one function.

`finetune` is the single place pruning code trains a model, so it can be swapped for the
project's training engine (slimkit.engine.fit) in one line. It takes a `step_hook` so
schedules (gradual sparsity, progressive pruning) can act after every optimizer step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from slimkit.errors import BadInputError

__all__ = ["finetune", "evaluate", "kd_loss", "loader"]


def loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's distillation loss: T^2 * KL(softmax(t/T) || softmax(s/T))."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (left in eval mode) on `dataset`."""
    model.eval()
    correct = total = 0
    for x, y in loader(dataset, batch_size, shuffle=False):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def finetune(
    model: nn.Module,
    train: Dataset,
    epochs: float,
    *,
    lr: float = 0.01,
    batch_size: int = 64,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.5,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    step_hook: Callable[[int, int], None] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train `model` in place for `epochs` (fractions allowed) with SGD + cosine LR; returns last loss."""
    torch.manual_seed(seed)
    data = loader(train, batch_size, shuffle=True, seed=seed)
    total = max(1, int(math.ceil(epochs * len(data))))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    if teacher is not None:
        teacher.eval()
    step, last = 0, float("nan")
    bar = _progress(progress, total)
    while step < total:
        for x, y in data:
            model.train()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = (1 - kd_alpha) * loss + kd_alpha * kd_loss(logits, t_logits)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            if not torch.isfinite(loss):
                raise BadInputError(f"training diverged: loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step, last = step + 1, float(loss.detach())
            if step_hook is not None:
                step_hook(step, total)
            bar(step, last)
            if step >= total:
                break
    bar(None, last)
    model.eval()
    return {"steps": step, "loss": last}


def _progress(enabled: bool, total: int) -> Callable:
    if not enabled:
        return lambda step, loss: None
    from rich.progress import Progress

    prog = Progress(transient=True)
    task = prog.add_task("fine-tuning", total=total)
    prog.start()

    def update(step, loss) -> None:
        if step is None:
            prog.stop()
        else:
            prog.update(task, completed=step, description=f"fine-tuning (loss {loss:.3f})")

    return update
