"""Hooks: where pruning schedules, quantization-aware training and logging plug into fit()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["Hook", "TrainState", "HookList", "EveryStep"]


@dataclass
class TrainState:
    """What a hook sees. `model` is the bare model (never the DDP wrapper)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    config: Any
    loss_fn: Any = None
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # step within the epoch
    global_step: int = 0  # optimizer steps taken so far in the whole run
    steps_per_epoch: int = 0
    total_steps: int = 0  # optimizer steps the whole run will take (epochs x steps per epoch, or max_steps)
    inputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # filled at epoch end (val top1 etc.)
    rank: int = 0
    world_size: int = 1
    stop_training: bool = False  # a hook sets this to end fit() after the current epoch


class Hook:
    """Override any of the callbacks; all default to doing nothing.

    on_step_end runs after optimizer.step() and the LR step, so a pruning hook can
    re-apply its masks there. extra_loss(state) may return a term added to the step's
    loss before the backward pass (a sparsity or MACs penalty; state.outputs holds the
    step's logits by then). A hook with state that must survive --resume returns it
    (JSON-serialisable) from state_dict() and takes it back in load_state_dict().
    """

    def on_epoch_begin(self, state: TrainState) -> None: ...

    def on_step_begin(self, state: TrainState) -> None: ...

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        return None

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class HookList:
    """Calls each hook in order."""

    def __init__(self, hooks: Sequence[Hook] | Hook | None = None):
        if hooks is None:
            hooks = []
        elif isinstance(hooks, Hook):
            hooks = [hooks]
        self.hooks = list(hooks)
        for hook in self.hooks:
            if not isinstance(hook, Hook):
                raise TypeError(f"hooks must subclass slimkit.engine.Hook, got {type(hook).__name__}")

    def __call__(self, event: str, state: TrainState) -> None:
        for hook in self.hooks:
            getattr(hook, event)(state)

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        terms = [t for t in (hook.extra_loss(state) for hook in self.hooks) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def state_dicts(self) -> list[dict[str, Any]]:
        return [hook.state_dict() for hook in self.hooks]

    def load_state_dicts(self, states: list[dict[str, Any]]) -> None:
        for hook, state in zip(self.hooks, states):
            hook.load_state_dict(state)


class EveryStep(Hook):
    """Calls `fn(global_step, total_steps)` after every optimizer step (a schedule such as gradual sparsity)."""

    def __init__(self, fn: Callable[[int, int], None]):
        self.fn = fn

    def on_step_end(self, state: TrainState) -> None:
        self.fn(state.global_step, state.total_steps)
