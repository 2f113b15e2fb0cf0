"""Early stopping on the val split: patience, an accuracy target, the best epoch kept, and a convergence verdict.

The decision depends only on the val top-1 curve (one value per completed epoch), so it is
rebuilt exactly from the run's history on --resume; the best weights live beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["EarlyStop", "StopVerdict", "STOP_REASONS"]

# cap: the epoch cap (TrainConfig.epochs) ended training; patience: no gain for `patience` epochs;
# target: val top-1 reached target_accuracy; max_steps: the step budget ended it; hook: a hook asked to stop.
STOP_REASONS = ("cap", "patience", "target", "max_steps", "hook")


@dataclass
class StopVerdict:
    """Why training stopped and whether the val curve had flattened by then."""

    reason: str
    best_epoch: int  # 1-based; 0 when no epoch was evaluated
    best_accuracy: float | None
    converged: bool | None  # None: no val curve to judge by

    def to_dict(self) -> dict[str, Any]:
        return {"stopped": self.reason, "best_epoch": self.best_epoch, "best_accuracy": self.best_accuracy,
                "converged": self.converged}

    def warning(self, cap: int) -> str | None:
        """One line for the console and the report when the cap cut a still-rising curve; else None."""
        if self.converged is not False:
            return None
        return (f"not converged: the {cap}-epoch cap stopped training while val top-1 was still rising "
                f"(best {100 * self.best_accuracy:.2f}% at the last epoch)")


@dataclass
class EarlyStop:
    """Feed it val top-1 after every epoch; it says when to stop and which epoch was best.

    An epoch improves when its accuracy beats the best so far by more than `min_delta`.
    """

    patience: int | None = None
    min_delta: float = 0.0
    target: float | None = None  # stop once val top-1 >= target (a fraction, like evaluate()'s top1)
    curve: list[float] = field(default_factory=list)
    best_epoch: int = 0
    reason: str | None = None

    @property
    def best(self) -> float:
        return self.curve[self.best_epoch - 1] if self.best_epoch else -math.inf

    def update(self, accuracy: float) -> bool:
        """Record one epoch's val top-1; True when it is the new best (its weights are the ones to keep)."""
        improved = accuracy > self.best + self.min_delta or not self.best_epoch
        self.curve.append(float(accuracy))
        if improved:
            self.best_epoch = len(self.curve)
        if self.target is not None and accuracy >= self.target:
            self.reason = "target"
        elif self.patience is not None and len(self.curve) - self.best_epoch >= self.patience:
            self.reason = "patience"
        return improved

    @property
    def should_stop(self) -> bool:
        return self.reason in ("target", "patience")

    @classmethod
    def replay(cls, curve: Sequence[float | None], **settings: Any) -> "EarlyStop":
        """The state after `curve` (a resumed run rebuilds it from its history)."""
        stop = cls(**settings)
        for accuracy in curve:
            if accuracy is not None:
                stop.update(accuracy)
        return stop

    def verdict(self, reason: str) -> StopVerdict:
        """`reason`: why the loop ended (a reason of this object's own wins). Still rising = the last epoch was best."""
        reason = self.reason if self.should_stop else reason
        if not self.curve:
            return StopVerdict(reason, 0, None, None)
        if len(self.curve) == 1 and reason in ("cap", "max_steps"):
            return StopVerdict(reason, 1, self.best, None)  # one point says nothing about the trend
        rising = reason in ("cap", "max_steps") and self.best_epoch == len(self.curve) and len(self.curve) > 1 \
            and self.curve[-1] > max(self.curve[:-1]) + self.min_delta
        return StopVerdict(reason, self.best_epoch, self.best, not rising)
