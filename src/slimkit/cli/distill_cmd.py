"""`slimkit distill STUDENT --teacher DIR [--teacher DIR --teacher-weight W ...] [--method kd|feature|dml]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from slimkit.cli import train_cmd as T
from slimkit.cli._training import is_main_rank, load_student, relaunch_if_needed, resolve_config, summary_line
from slimkit.cli.common import DATA_OPT, INPUT_SIZE_OPT, MODEL_HELP, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT
from slimkit.errors import BadInputError

__all__ = ["register"]

METHODS = ("kd", "feature", "dml")


def distill(
    student: str = typer.Argument(..., help=f"Student: {MODEL_HELP}"),
    teacher: List[str] = typer.Option([], "--teacher", "-t", help="Teacher model (directory); repeat for several"),
    teacher_weight: List[float] = typer.Option([], "--teacher-weight", help="Weight per --teacher, in order"),
    method: str = typer.Option("kd", "--method", help="kd (logits; multi-teacher if several) | feature | dml"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Softening temperature (kd 4, dml 1)"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the distillation term (kd 0.5, dml 1)"),
    beta: float = typer.Option(1.0, "--beta", help="feature: weight of the feature-matching loss"),
    feature_layer: List[str] = typer.Option([], "--feature-layer", help="feature: STUDENT_LAYER:TEACHER_LAYER pair"),
    data: str = DATA_OPT,
    out: Path = T.OUT_OPT,
    resume: bool = T.RESUME_OPT,
    overwrite: bool = T.OVERWRITE_OPT,
    nproc: Optional[int] = T.NPROC_OPT,
    input_size: Optional[str] = INPUT_SIZE_OPT,
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    config: Optional[Path] = T.CONFIG_OPT,
    epochs: Optional[int] = T.EPOCHS_OPT,
    batch_size: Optional[int] = T.BATCH_OPT,
    optimizer: Optional[str] = T.OPTIM_OPT,
    lr: Optional[float] = T.LR_OPT,
    weight_decay: Optional[float] = T.WD_OPT,
    momentum: Optional[float] = T.MOMENTUM_OPT,
    warmup_epochs: Optional[float] = T.WARMUP_OPT,
    schedule: Optional[str] = T.SCHEDULE_OPT,
    label_smoothing: Optional[float] = T.SMOOTH_OPT,
    grad_clip: Optional[float] = T.CLIP_OPT,
    seed: Optional[int] = T.SEED_OPT,
    bf16: Optional[bool] = T.BF16_OPT,
    sync_bn: Optional[bool] = T.SYNC_BN_OPT,
    num_workers: Optional[int] = T.WORKERS_OPT,
    device: Optional[str] = T.DEVICE_OPT,
    weights: Optional[Path] = T.WEIGHTS_OPT,
    trust_code: bool = T.TRUST_OPT,
) -> None:
    """Train STUDENT with knowledge distillation from --teacher model(s); OUT ends as the student's model directory."""
    args = dict(locals())
    cfg = resolve_config(config, {k: args[k] for k in T.TRAIN_FLAGS}, resume_from=out if resume else None)
    _check_method_args(method, teacher, teacher_weight, feature_layer)
    if relaunch_if_needed(nproc, "distill"):
        return
    from slimkit.cli.common import console, save_resolved_args
    from slimkit.engine import fit
    from slimkit.engine.outputs import prepare_out_dir

    prepare_out_dir(out, resume=resume, overwrite=overwrite, write=False)  # fail before any heavy loading
    net, info, bundle = load_student(student, data=data, input_size=input_size, train_samples=train_samples,
                                     val_samples=val_samples, seed=cfg.seed, trust_code=trust_code, weights=weights)
    teachers = [_load_teacher(spec, bundle, trust_code, trainable=(method == "dml")) for spec in teacher]
    if method == "dml" and not teachers:
        import torch

        torch.manual_seed(cfg.seed + 1)  # a peer of the same architecture with different initial weights
        teachers = [load_student(student, data=data, input_size=input_size, train_samples=train_samples,
                                 val_samples=val_samples, seed=cfg.seed + 1, trust_code=trust_code)[:2]]
    loss = _build_loss(method, net, teachers, bundle, teacher_weight, temperature, alpha, beta, feature_layer)
    extra = {"distillation": {"method": loss.method, "teachers": list(teacher), **_loss_settings(loss)}}
    if method != "dml":
        extra["distillation"]["teacher_accuracy"] = [_own_format_accuracy(m, i, bundle) for m, i in teachers]
    prepare_out_dir(out, resume=resume, overwrite=overwrite, write=is_main_rank())
    if is_main_rank():
        save_resolved_args(out, "distill", {**args, "config": cfg.to_dict(), "input_size": bundle.input_size,
                                            "num_classes": bundle.num_classes})
    result = fit(net, bundle, cfg, out_dir=out, resume=resume, overwrite=overwrite, info=info, loss_fn=loss,
                 extra_metrics=extra)
    if method == "dml" and is_main_rank():
        _save_peer(loss.peer, teachers[0][1], bundle, out)
    if is_main_rank():
        console().print(summary_line(result, out))


def _check_method_args(method: str, teachers: list, weights: list, layers: list) -> None:
    if method not in METHODS:
        raise BadInputError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    if method != "dml" and not teachers:
        raise BadInputError(f"--method {method} needs at least one --teacher")
    if weights and len(weights) != len(teachers):
        raise BadInputError(f"{len(weights)} --teacher-weight values for {len(teachers)} --teacher models")
    if method != "kd" and (len(teachers) > 1 or weights):
        raise BadInputError(f"--method {method} takes one --teacher; several teachers work with --method kd")
    if layers and method != "feature":
        raise BadInputError("--feature-layer only applies to --method feature")


def _load_teacher(spec: str, bundle: Any, trust_code: bool, trainable: bool) -> tuple[Any, Any]:
    """(model, info) of a teacher, checked to predict the data's classes."""
    import torch

    from slimkit.engine.evaluate import logits_of
    from slimkit.models import load_model

    model, info = load_model(spec, trust_code=trust_code, num_classes=None)
    if info.num_classes is not None and info.num_classes != bundle.num_classes:
        raise BadInputError(f"teacher {spec} has {info.num_classes} classes but the student and "
                            f"{bundle.name} have {bundle.num_classes}")
    x = torch.zeros(2, *info.input_size)
    with torch.no_grad():
        classes = logits_of(model.eval()(x)).shape[1]
    if classes != bundle.num_classes:
        raise BadInputError(f"teacher {spec} predicts {classes} classes but the student and "
                            f"{bundle.name} have {bundle.num_classes}")
    if trainable:
        model.train()
    return model, info


def _build_loss(method, student, teachers, bundle, weights, temperature, alpha, beta, layers):
    from slimkit.compress.distill import FeatureKD, FrozenTeacher, LogitKD, MultiTeacherKD, MutualLearning

    fmt = (bundle.input_size, bundle.mean, bundle.std)
    frozen = [FrozenTeacher(m, fmt, (tuple(i.input_size), tuple(i.mean), tuple(i.std))) for m, i in teachers]
    kd_kw = {"temperature": 4.0 if temperature is None else temperature, "alpha": 0.5 if alpha is None else alpha}
    if method == "dml":
        return MutualLearning(teachers[0][0], temperature=temperature or 1.0, alpha=1.0 if alpha is None else alpha)
    if method == "feature":
        pairs = [_pair(p) for p in layers] or None
        example = bundle.train.transform(bundle.train.images[:2])
        return FeatureKD(student, frozen[0], example, pairs=pairs, beta=beta,
                         alpha=0.0 if alpha is None else alpha, temperature=kd_kw["temperature"])
    if len(frozen) == 1 and not weights:
        return LogitKD(frozen[0], **kd_kw)
    return MultiTeacherKD(frozen, weights or None, **kd_kw)


def _own_format_accuracy(model: Any, info: Any, bundle: Any) -> float:
    """A teacher's val top-1 with the input size and normalisation it was trained with."""
    from slimkit.data import ImageTensorDataset
    from slimkit.engine import evaluate

    val = ImageTensorDataset(bundle.val.images, bundle.val.labels, info.input_size, info.mean, info.std)
    return evaluate(model, val)["top1"]


def _pair(text: str) -> tuple[str, str]:
    student, sep, teacher = text.partition(":")
    if not sep or not student or not teacher:
        raise BadInputError(f"--feature-layer wants STUDENT_LAYER:TEACHER_LAYER, got {text!r}")
    return student, teacher


def _loss_settings(loss: Any) -> dict[str, Any]:
    keys = ("temperature", "alpha", "beta", "weights", "pairs")
    return {k: getattr(loss, k) for k in keys if hasattr(loss, k)}


def _save_peer(peer: Any, info: Any, bundle: Any, out: Path) -> None:
    from slimkit.engine import evaluate
    from slimkit.engine.outputs import model_info_for
    from slimkit.models import save_model_dir
    from slimkit.utils.io import atomic_write_json

    peer.eval()
    save_model_dir(peer, model_info_for(peer, info, bundle), out / "peer")
    result = evaluate(peer, bundle.val)
    atomic_write_json(out / "peer" / "metrics.json", {"accuracy": result["top1"], "top5": result["top5"],
                                                     "val_loss": result["loss"], "role": "dml peer"})


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
