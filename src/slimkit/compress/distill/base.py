"""Distillation building blocks: the distiller registry, frozen teachers, and the softened-KL term.

A distiller is a loss module for slimkit.engine.fit: `loss(student_logits, targets,
inputs)`. Its own trainable parts (feature adapters, a mutual-learning peer) are
trained by fit's optimizer and saved in fit's checkpoints; teachers are frozen and
kept out of its state_dict, so checkpoints stay small.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.errors import BadInputError
from slimkit.utils.registry import Registry

__all__ = ["Distiller", "FrozenTeacher", "DISTILLERS", "register_distiller", "build_distiller", "list_distillers", "kd_divergence",
           "check_logits", "freeze"]

DISTILLERS: Registry = Registry("distillation method", modules={
    "kd": "slimkit.compress.distill.logit", "multi": "slimkit.compress.distill.multi_teacher",
    "feature": "slimkit.compress.distill.feature", "dml": "slimkit.compress.distill.mutual",
    "self": "slimkit.compress.distill.self_distill"})


def register_distiller(name: str) -> Callable[[type], type]:
    """Class decorator: make a Distiller subclass buildable as build_distiller(name, ...)."""

    def deco(cls: type) -> type:
        DISTILLERS.add(name, cls)
        cls.method = name
        return cls

    return deco


def list_distillers() -> list[str]:
    return DISTILLERS.names()


def build_distiller(name: str, **kwargs: Any) -> "Distiller":
    """A new distiller of method `name` (kd, multi, feature, dml, self)."""
    return DISTILLERS.get(name)(**kwargs)


def check_logits(student: torch.Tensor, teacher: torch.Tensor, label: str = "teacher") -> None:
    if student.shape != teacher.shape:
        raise BadInputError(f"{label} gives logits of shape {tuple(teacher.shape)} but the student gives "
                            f"{tuple(student.shape)}: teacher and student must have the same classes")


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of T
    (Hinton et al., 2015), so alpha means the same thing at every temperature.
    """
    check_logits(student_logits, teacher_logits)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class FrozenTeacher(nn.Module):
    """A teacher in eval mode with gradients off; adapts the student's inputs to the teacher's format.

    If the teacher was trained at another input size or normalisation, the student's
    normalised batch is un-normalised, resized and re-normalised for it.
    """

    def __init__(self, model: nn.Module, student_format: tuple | None = None, teacher_format: tuple | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self._convert = None
        if student_format is not None and teacher_format is not None and student_format != teacher_format:
            self._convert = (student_format, teacher_format)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # a teacher never updates its BatchNorm statistics

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self._convert is None:
            return x
        (_, s_mean, s_std), (t_size, t_mean, t_std) = self._convert
        view = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # noqa: E731
        raw = x * view(_channels(s_std, x.shape[1])) + view(_channels(s_mean, x.shape[1]))
        c, h, w = t_size
        if raw.shape[1] != c:
            raw = raw.mean(1, keepdim=True).expand(-1, c, -1, -1)
        if tuple(raw.shape[-2:]) != (h, w):
            raw = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return (raw - view(_channels(t_mean, c))) / view(_channels(t_std, c))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from slimkit.engine.evaluate import logits_of

        return logits_of(self.model(self.adapt(x)))


def _channels(values: tuple, c: int) -> list[float]:
    values = [float(v) for v in values]
    return values if len(values) == c else [sum(values) / len(values)] * c


def freeze(teacher: nn.Module | FrozenTeacher) -> FrozenTeacher:
    return teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)


class Distiller(nn.Module):
    """Base of every distillation loss. Subclasses implement forward(logits, targets, inputs)."""

    wants_inputs = True  # fit() passes the input batch so teachers can see it
    method = "base"

    def __init__(self, label_smoothing: float | None = None):
        super().__init__()
        self.label_smoothing = label_smoothing  # None: fit() fills in the TrainConfig's value
        self.last_terms: dict[str, float] = {}  # the latest batch's loss terms, logged per epoch
        self._teachers: list[FrozenTeacher] = []

    def _set_teachers(self, teachers: list[nn.Module]) -> None:
        # A plain list: teachers stay out of parameters(), state_dict() and the optimizer.
        self._teachers = [freeze(t) for t in teachers]

    @property
    def teachers(self) -> list[FrozenTeacher]:
        return self._teachers

    def _apply(self, fn: Callable, recurse: bool = True) -> "Distiller":
        super()._apply(fn, recurse)
        for teacher in self._teachers:  # .to(device) must move the unregistered teachers too
            teacher._apply(fn, recurse)
        return self

    def hard_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing or 0.0)
