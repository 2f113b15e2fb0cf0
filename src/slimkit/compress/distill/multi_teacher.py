"""Multi-teacher KD: one softened-KL term per teacher, mixed by per-teacher weights.

Teachers that are right in different ways (a tolerant one trained on soft targets,
a tough one on hard labels, say) each pull the student with their own weight.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from slimkit.compress.distill.base import Distiller, kd_divergence, register_distiller
from slimkit.compress.distill.logit import check_kd_args
from slimkit.errors import BadInputError

__all__ = ["MultiTeacherKD"]


@register_distiller("multi")
class MultiTeacherKD(Distiller):
    """loss = (1 - alpha) * CE + alpha * sum_i w_i * T^2 * KL(teacher_i || student), w normalised to sum 1."""

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 temperature: float = 4.0, alpha: float = 0.5, label_smoothing: float | None = None):
        super().__init__(label_smoothing)
        check_kd_args(temperature, alpha)
        teachers = list(teachers)
        if not teachers:
            raise BadInputError("multi-teacher distillation needs at least one teacher")
        weights = [1.0] * len(teachers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(teachers):
            raise BadInputError(f"{len(weights)} teacher weights given for {len(teachers)} teachers")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise BadInputError(f"teacher weights must be >= 0 with a positive sum, got {weights}")
        self.weights = [w / sum(weights) for w in weights]
        self.temperature, self.alpha = float(temperature), float(alpha)
        self._set_teachers(teachers)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        hard = self.hard_loss(logits, targets)
        soft = logits.new_zeros(())
        terms = {"ce": float(hard.detach())}
        for i, (teacher, weight) in enumerate(zip(self.teachers, self.weights)):
            if weight == 0:
                continue  # a zero-weight teacher costs no forward pass
            term = kd_divergence(logits, teacher(inputs), self.temperature)
            terms[f"kd{i}"] = float(term.detach())
            soft = soft + weight * term
        terms["kd"] = float(soft.detach())
        self.last_terms = terms
        return (1 - self.alpha) * hard + self.alpha * soft
