"""One accuracy limit for the whole compress run: how many top-1 points pruning, fine-tuning and int8 may spend.

`max_drop` is in top-1 points against the trained baseline. When a quantize step follows, the
cuts and the fine-tune aim at `CUT_SHARE` of it, leaving the rest to int8. `priority` decides what
gives when the budget cannot be met within the limit: `budget` meets it and reports the drop;
`accuracy` stays within the limit and reports the best latency reached.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimkit.errors import BadInputError

__all__ = ["AccuracyLimit", "PRIORITIES", "CUT_SHARE"]

PRIORITIES = ("budget", "accuracy")
CUT_SHARE = 0.5  # with int8 to come, pruning + fine-tuning may spend half the limit


@dataclass(frozen=True)
class AccuracyLimit:
    max_drop: float | None  # None: no limit (each step keeps its own settings)
    priority: str = "budget"
    has_quantize: bool = False

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise BadInputError(f"priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}")
        if self.max_drop is not None and not 0.0 <= self.max_drop < 100.0:
            raise BadInputError(f"max_drop must be in [0, 100) top-1 points, got {self.max_drop}")

    @property
    def cut_drop(self) -> float | None:
        """Points the cuts and the fine-tune may spend (the rest is int8's)."""
        if self.max_drop is None:
            return None
        return self.max_drop * (CUT_SHARE if self.has_quantize else 1.0)

    def finetune_target(self, baseline: float) -> float | None:
        """Val top-1 (points) at which fine-tuning stops: the baseline less the cuts' share of the limit."""
        return None if self.cut_drop is None else baseline - self.cut_drop

    def cut_ok(self, baseline: float, accuracy: float) -> bool:
        return self.cut_drop is None or baseline - accuracy <= self.cut_drop + 1e-9

    def int8_allowance(self, baseline: float, current: float, own: float | None) -> float | None:
        """int8's max_drop (points against its fp32 input): what the limit leaves, given `current` fp32 top-1.

        budget: int8 may spend at least its share (or the step's own max_drop) even when the cuts spent more;
        accuracy: only what remains, and never more than the step's own max_drop.
        """
        if self.max_drop is None:
            return own
        remaining = max(0.0, self.max_drop - (baseline - current))
        if self.priority == "budget":
            return max(remaining, own if own is not None else self.max_drop - (self.cut_drop or 0.0))
        return remaining if own is None else min(remaining, own)
