"""Feature KD: student feature maps regress the teacher's, through learned 1x1 adapters.

Each (student layer, teacher layer) pair gets an adapter mapping the student's
channels to the teacher's (a 1x1 convolution for maps, a linear layer for
vectors); the student map is resized to the teacher's spatial size when they
differ. The adapters are trained with the student and dropped afterwards.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.compress.distill.base import Distiller, FrozenTeacher, freeze, kd_divergence, register_distiller
from slimkit.compress.distill.logit import check_kd_args
from slimkit.errors import BadInputError

__all__ = ["FeatureKD", "last_feature_layer"]


def _capture_shapes(model: nn.Module, example: torch.Tensor, names: Sequence[str] | None) -> dict[str, torch.Size]:
    """Output shapes of the named modules (all leaf modules when names is None) for one forward."""
    modules = dict(model.named_modules())
    if names is None:
        names = [n for n, m in modules.items() if n and not any(True for _ in m.children())]
    missing = [n for n in names if n not in modules]
    if missing:
        raise BadInputError(f"no layer named {missing[0]!r} in {type(model).__name__}")
    shapes: dict[str, torch.Size] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shapes.pop(name, None)  # keep call order: a module called twice counts at its last call
                shapes[name] = out.shape
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def last_feature_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last leaf module whose output is a feature map (N, C, H, W), H*W > 1 preferred (not a pooled vector)."""
    shapes = _capture_shapes(model, example, None)
    maps = [name for name, shape in shapes.items() if len(shape) == 4 and shape[2] * shape[3] > 1]
    maps = maps or [name for name, shape in shapes.items() if len(shape) == 4]
    if not maps:
        raise BadInputError(f"{type(model).__name__} has no layer with a 4-d feature map; name the layers")
    return maps[-1]


def _adapter(s_shape: torch.Size, t_shape: torch.Size) -> nn.Module:
    if len(s_shape) == 4 and len(t_shape) == 4:
        return nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=False)
    if len(s_shape) == len(t_shape) and len(s_shape) in (2, 3):
        return nn.Linear(s_shape[-1], t_shape[-1], bias=False)
    raise BadInputError(f"cannot pair a student feature of shape {tuple(s_shape)} with a teacher's {tuple(t_shape)}")


@register_distiller("feature")
class FeatureKD(Distiller):
    """loss = (1 - alpha) * CE + alpha * T^2 * KL(logits) + beta * mean_pairs MSE(adapter(f_s), f_t)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, example_input: torch.Tensor,
                 pairs: Sequence[tuple[str, str]] | None = None, beta: float = 1.0, alpha: float = 0.0,
                 temperature: float = 4.0, label_smoothing: float | None = None):
        super().__init__(label_smoothing)
        check_kd_args(temperature, alpha)
        if beta < 0:
            raise BadInputError(f"feature loss weight beta must be >= 0, got {beta}")
        self.beta, self.alpha, self.temperature = float(beta), float(alpha), float(temperature)
        teacher = freeze(teacher)
        self._set_teachers([teacher])
        t_example = teacher.adapt(example_input)
        if pairs is None:
            pairs = [(last_feature_layer(student, example_input), last_feature_layer(teacher.model, t_example))]
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        s_shapes = _capture_shapes(student, example_input, [s for s, _ in self.pairs])
        t_shapes = _capture_shapes(teacher.model, t_example, [t for _, t in self.pairs])
        self.adapters = nn.ModuleList(_adapter(s_shapes[s], t_shapes[t]) for s, t in self.pairs)
        self._student_feats: dict[str, torch.Tensor] = {}
        self._teacher_feats: dict[str, torch.Tensor] = {}
        self._handles = self._attach(student, teacher)

    def _attach(self, student: nn.Module, teacher: FrozenTeacher) -> list:
        def keeper(store: dict, name: str):
            def keep(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                store[name] = out
            return keep

        handles = [student.get_submodule(s).register_forward_hook(keeper(self._student_feats, s))
                   for s, _ in self.pairs]
        handles += [teacher.model.get_submodule(t).register_forward_hook(keeper(self._teacher_feats, t))
                    for _, t in self.pairs]
        return handles

    def close(self) -> None:
        """Remove the forward hooks from student and teacher (call after training)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._student_feats.clear()
        self._teacher_feats.clear()

    def feature_loss(self) -> torch.Tensor:
        total = None
        for adapter, (s, t) in zip(self.adapters, self.pairs):
            f_s, f_t = adapter(self._student_feats[s].float()), self._teacher_feats[t].float()
            if f_s.ndim == 4 and f_s.shape[-2:] != f_t.shape[-2:]:
                f_s = F.interpolate(f_s, size=f_t.shape[-2:], mode="bilinear", align_corners=False)
            term = F.mse_loss(f_s, f_t)
            total = term if total is None else total + term
        return total / len(self.pairs)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.teachers[0](inputs)  # also fills the teacher feature store
        hard = self.hard_loss(logits, targets)
        feat = self.feature_loss()
        loss = (1 - self.alpha) * hard + self.beta * feat
        terms = {"ce": float(hard.detach()), "feature": float(feat.detach())}
        if self.alpha > 0:
            soft = kd_divergence(logits, teacher_logits, self.temperature)
            loss = loss + self.alpha * soft
            terms["kd"] = float(soft.detach())
        self.last_terms = terms
        return loss
