"""One training epoch: forward, loss, non-finite check, backward, clip, step, hooks, progress."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.engine.distributed import DistContext, allreduce_mean_
from slimkit.engine.evaluate import logits_of
from slimkit.engine.hooks import HookList, TrainState
from slimkit.engine.progress import ProgressBar
from slimkit.errors import SlimkitError

__all__ = ["TrainingDivergedError", "EpochStats", "train_one_epoch", "compute_loss"]


class TrainingDivergedError(SlimkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # running sums of a loss module's terms

    def summary(self, ctx: DistContext) -> dict[str, float]:
        """Totals over all ranks (every rank gets the same numbers)."""
        keys = sorted(self.extra)
        values = torch.tensor([self.loss_sum, self.correct, self.seen, *[self.extra[k] for k in keys]],
                              dtype=torch.float64)
        if ctx.distributed:
            torch.distributed.all_reduce(values)
        loss_sum, correct, seen, *extra = values.tolist()
        seen = max(seen, 1.0)
        out = {"train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "images_per_s": seen / max(self.seconds, 1e-9)}
        out.update({f"train_{k}": v / seen for k, v in zip(keys, extra)})
        return out


def compute_loss(loss_fn: Any, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Call a plain criterion as loss_fn(logits, targets); a distiller also gets the inputs."""
    if getattr(loss_fn, "wants_inputs", False):
        return loss_fn(logits, targets, inputs)
    return loss_fn(logits, targets)


def default_loss(label_smoothing: float):
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return loss


def _check_finite(loss: torch.Tensor, state: TrainState, ctx: DistContext) -> float:
    value = loss.detach().float().reshape(1).clone()
    if ctx.distributed:  # every rank must agree to stop, or the others hang in the next all-reduce
        torch.distributed.all_reduce(value)
        value /= ctx.world_size
    number = float(value)
    if not math.isfinite(number):
        raise TrainingDivergedError(
            f"loss became {number} at epoch {state.epoch + 1}, step {state.step + 1} (lower the lr or set grad_clip)"
        )
    return number


def _loss_module_grads(loss_params: list[nn.Parameter]) -> list[torch.Tensor]:
    # Every rank must all-reduce the same tensors, so a missing gradient counts as zero.
    for p in loss_params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in loss_params]


def train_one_epoch(
    net: nn.Module,
    state: TrainState,
    loader: Any,
    hooks: HookList,
    ctx: DistContext,
    bar: ProgressBar,
    loss_params: list[nn.Parameter],
    bf16: bool,
) -> EpochStats:
    """Run one pass over `loader`, updating the model in place; returns this rank's running sums."""
    config, optimizer, scheduler = state.config, state.optimizer, state.scheduler
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    stats = EpochStats()
    net.train()
    if isinstance(state.loss_fn, nn.Module):
        state.loss_fn.train()
    start = time.perf_counter()
    for step, (inputs, targets) in enumerate(loader):
        inputs, targets = inputs.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        state.step, state.inputs, state.targets = step, inputs, targets
        hooks("on_step_begin", state)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = logits_of(net(inputs))
            loss = compute_loss(state.loss_fn, logits.float(), targets, inputs)
        state.outputs = logits.detach()
        extra = hooks.extra_loss(state)
        if extra is not None:
            loss = loss + extra
        value = _check_finite(loss, state, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        allreduce_mean_(_loss_module_grads(loss_params), ctx)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(all_params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        state.global_step += 1
        state.outputs, state.loss = logits.detach(), value
        _accumulate(stats, state, logits, targets, value)
        hooks("on_step_end", state)
        stats.seconds = time.perf_counter() - start
        bar.update(stats.loss_sum / stats.seen, stats.correct / stats.seen,
                   stats.seen * ctx.world_size / max(stats.seconds, 1e-9))
        if state.global_step >= state.total_steps:  # max_steps reached mid-epoch
            state.stop_training = True
            break
    return stats


def _accumulate(stats: EpochStats, state: TrainState, logits: torch.Tensor, targets: torch.Tensor,
                value: float) -> None:
    n = len(targets)
    stats.loss_sum += value * n
    stats.correct += int((logits.detach().argmax(1) == targets).sum())
    stats.seen += n
    for key, term in (getattr(state.loss_fn, "last_terms", None) or {}).items():
        stats.extra[key] = stats.extra.get(key, 0.0) + float(term) * n
