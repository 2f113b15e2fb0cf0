"""`distill(student, teachers, config, data=...)`: knowledge distillation through engine.fit, in one verb.

    from slimkit.compress.distill import DistillConfig, distill
    result = distill(student, [teacher], DistillConfig(method="kd", temperature=4), data=bundle,
                     train=TrainConfig(epochs=5), out_dir="runs/kd")

Teachers are frozen (eval mode, no gradients) and may have been trained at another input size
or normalisation: give them as (model, ModelInfo) pairs and each sees the student's batch in
its own format. `method`: kd (one teacher; several are mixed by `teacher_weights`), feature
(feature maps through learned 1x1 adapters), dml (mutual learning: the "teacher" is a peer
trained alongside; without one, a copy of the student re-initialised with seed + 1).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from slimkit.errors import BadInputError

__all__ = ["DistillConfig", "distill", "load_teacher", "check_teachers", "build_loss", "METHODS"]

METHODS = ("kd", "feature", "dml")
_DEFAULTS = {"kd": (4.0, 0.5), "feature": (4.0, 0.0), "dml": (1.0, 1.0)}  # method -> (temperature, alpha)


@dataclass
class DistillConfig:
    """How to distil; temperature and alpha default per method (kd 4 / 0.5, feature 4 / 0, dml 1 / 1)."""

    method: str = "kd"
    temperature: float | None = None
    alpha: float | None = None  # weight of the distillation term (dml: of each mimicry term)
    beta: float = 1.0  # feature: weight of the feature-matching loss
    teacher_weights: list[float] = field(default_factory=list)  # kd with several teachers
    feature_layers: list[tuple[str, str]] = field(default_factory=list)  # feature: (student, teacher) layer pairs
    version: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(f"unknown distillation method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.feature_layers and self.method != "feature":
            raise BadInputError("feature_layers only apply to method feature")
        self.feature_layers = [tuple(p) for p in self.feature_layers]
        default_t, default_a = _DEFAULTS[self.method]
        self.temperature = default_t if self.temperature is None else float(self.temperature)
        self.alpha = default_a if self.alpha is None else float(self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_teacher(spec: str, data: Any, *, trust_code: bool = False, trainable: bool = False) -> tuple[nn.Module, Any]:
    """(model, ModelInfo) of a teacher named by `spec`, checked to predict `data`'s classes."""
    from slimkit.engine.evaluate import logits_of
    from slimkit.models import load_model

    model, info = load_model(spec, trust_code=trust_code, num_classes=None)
    if info.num_classes is not None and info.num_classes != data.num_classes:
        raise BadInputError(f"teacher {spec} has {info.num_classes} classes but the student and "
                            f"{data.name} have {data.num_classes}")
    with torch.no_grad():
        classes = logits_of(model.eval()(torch.zeros(2, *info.input_size))).shape[1]
    if classes != data.num_classes:
        raise BadInputError(f"teacher {spec} predicts {classes} classes but the student and "
                            f"{data.name} have {data.num_classes}")
    return model.train(trainable), info


def _pairs(teachers: Any) -> list[tuple[nn.Module, Any]]:
    """Teachers as (model, ModelInfo or None) pairs."""
    if teachers is None:
        return []
    if isinstance(teachers, nn.Module) or (isinstance(teachers, tuple) and len(teachers) == 2
                                           and isinstance(teachers[0], nn.Module) and not isinstance(teachers[1], nn.Module)):
        teachers = [teachers]
    return [t if isinstance(t, tuple) else (t, None) for t in teachers]


def _peer(student: nn.Module, seed: int) -> nn.Module:
    """A copy of the student with fresh weights (drawn with `seed`): the default mutual-learning partner."""
    peer = copy.deepcopy(student)
    torch.manual_seed(seed)
    for module in peer.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return peer.train()


def _format(info: Any) -> tuple | None:
    return None if info is None else (tuple(info.input_size), tuple(info.mean), tuple(info.std))


def build_loss(config: DistillConfig, student: nn.Module, teachers: list[tuple[nn.Module, Any]], data: Any):
    """The distiller (an engine.fit loss module) for `config`."""
    from slimkit.compress.distill import FeatureKD, FrozenTeacher, LogitKD, MultiTeacherKD, MutualLearning

    if config.method == "dml":
        return MutualLearning(teachers[0][0], temperature=config.temperature, alpha=config.alpha)
    student_format = (tuple(data.input_size), tuple(data.mean), tuple(data.std)) if hasattr(data, "mean") else None
    frozen = [FrozenTeacher(m, student_format, _format(i)) for m, i in teachers]
    kd = {"temperature": config.temperature, "alpha": config.alpha}
    if config.method == "feature":
        example = next(iter(torch.utils.data.DataLoader(data.train, batch_size=2)))[0]
        return FeatureKD(student, frozen[0], example, pairs=config.feature_layers or None, beta=config.beta, **kd)
    if len(frozen) == 1 and not config.teacher_weights:
        return LogitKD(frozen[0], **kd)
    return MultiTeacherKD(frozen, config.teacher_weights or None, **kd)


def check_teachers(config: DistillConfig, count: int, noun: str = "teacher") -> None:
    """Refuse a teacher count the method cannot use (the CLI calls it with noun="--teacher", before loading)."""
    if config.method != "dml" and not count:
        raise BadInputError(f"distillation method {config.method} needs at least one {noun}")
    if config.teacher_weights and len(config.teacher_weights) != count:
        raise BadInputError(f"{len(config.teacher_weights)} {noun}-weight values for {count} {noun} models")
    if config.method != "kd" and (count > 1 or config.teacher_weights):
        raise BadInputError(f"method {config.method} takes one {noun}; several teachers work with method kd")


def _teacher_accuracy(model: nn.Module, info: Any, data: Any) -> float:
    """A teacher's val top-1 with the input size and normalisation it was trained with."""
    from slimkit.data import ImageTensorDataset
    from slimkit.engine import evaluate

    if info is None or not hasattr(data.val, "images"):
        return evaluate(model, data.val)["top1"]
    val = ImageTensorDataset(data.val.images, data.val.labels, info.input_size, info.mean, info.std)
    return evaluate(model, val)["top1"]


def _save_peer(peer: nn.Module, info: Any, data: Any, out: Path) -> None:
    from slimkit.engine import evaluate
    from slimkit.engine.outputs import model_info_for
    from slimkit.models import save_model_dir
    from slimkit.utils.io import atomic_write_json

    peer.eval()
    save_model_dir(peer, model_info_for(peer, info, data), out / "peer")
    result = evaluate(peer, data.val)
    atomic_write_json(out / "peer" / "metrics.json", {"accuracy": result["top1"], "top5": result["top5"],
                                                     "val_loss": result["loss"], "role": "dml peer"})


def distill(student: nn.Module, teachers: Any = None, config: DistillConfig | None = None, *, data: Any,
            train: Any = None, out_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
            info: Any = None, progress: bool = True, teacher_names: Sequence[str] = ()):
    """Train `student` in place with knowledge distillation from `teachers` (left unchanged); returns fit's FitResult.

    `data` is a DataBundle; `train` a TrainConfig (default TrainConfig()); with `out_dir` the run
    checkpoints every epoch and ends as the student's model directory (plus peer/ for dml).
    """
    from slimkit.engine import TrainConfig, fit
    from slimkit.engine.distributed import is_main_process

    config = config or DistillConfig()
    train = train or TrainConfig()
    pairs = _pairs(teachers)
    check_teachers(config, len(pairs))
    if config.method == "dml" and not pairs:
        pairs = [(_peer(student, train.seed + 1), info)]
    loss = build_loss(config, student, pairs, data)
    settings = {k: getattr(loss, k) for k in ("temperature", "alpha", "beta", "weights", "pairs") if hasattr(loss, k)}
    extra = {"distillation": {"method": loss.method, "teachers": list(teacher_names), **settings}}
    if config.method != "dml":
        extra["distillation"]["teacher_accuracy"] = [_teacher_accuracy(m, i, data) for m, i in pairs]
    result = fit(student, data, train, out_dir=out_dir, resume=resume, overwrite=overwrite, info=info, loss_fn=loss,
                 extra_metrics=extra, progress=progress)
    if config.method == "dml" and out_dir is not None and is_main_process():
        _save_peer(loss.peer, pairs[0][1] or info, data, Path(out_dir))
    if hasattr(loss, "close"):
        loss.close()  # feature hooks off the student
    return result
