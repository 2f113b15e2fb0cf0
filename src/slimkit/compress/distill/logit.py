"""Logit KD: the student matches the teacher's temperature-softened class distribution."""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.compress.distill.base import Distiller, kd_divergence, register_distiller
from slimkit.errors import BadInputError

__all__ = ["LogitKD"]


def check_kd_args(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise BadInputError(f"distillation temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise BadInputError(f"distillation alpha must be in [0, 1], got {alpha}")


@register_distiller("kd")
class LogitKD(Distiller):
    """loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T)."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5,
                 label_smoothing: float | None = None):
        super().__init__(label_smoothing)
        check_kd_args(temperature, alpha)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self._set_teachers([teacher])

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        hard = self.hard_loss(logits, targets)
        soft = kd_divergence(logits, self.teachers[0](inputs), self.temperature)
        self.last_terms = {"ce": float(hard.detach()), "kd": float(soft.detach())}
        return (1 - self.alpha) * hard + self.alpha * soft
