"""Self-distillation from the uncompressed model: the compressed model learns from a frozen copy of its original.

The compress pipeline calls self_distill(compressed, original, data, config) after
pruning or quantizing, so accuracy is recovered against the original's soft
predictions rather than the labels alone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from slimkit.compress.distill.base import register_distiller
from slimkit.compress.distill.logit import LogitKD

__all__ = ["SelfDistill", "self_distill"]


@register_distiller("self")
class SelfDistill(LogitKD):
    """Logit KD whose teacher is a frozen deep copy of `original` (later edits to it do not leak in)."""

    def __init__(self, original: nn.Module, temperature: float = 4.0, alpha: float = 0.5,
                 label_smoothing: float | None = None):
        super().__init__(copy.deepcopy(original), temperature=temperature, alpha=alpha,
                         label_smoothing=label_smoothing)


def self_distill(model: nn.Module, original: nn.Module, data: Any, config: Any = None, *,
                 temperature: float = 4.0, alpha: float = 0.5, **fit_kwargs: Any):
    """Fine-tune `model` in place (returns fit's FitResult) with KD from a frozen copy of `original`."""
    from slimkit.engine import fit

    loss = SelfDistill(original, temperature=temperature, alpha=alpha)
    return fit(model, data, config, loss_fn=loss, **fit_kwargs)
