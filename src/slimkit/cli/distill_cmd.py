"""`slimkit distill STUDENT --teacher DIR [--teacher DIR --teacher-weight W ...] [--method kd|feature|dml]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from slimkit.cli import train_cmd as T
from slimkit.cli._training import is_main_rank, load_student, relaunch_if_needed, resolve_config, summary_line
from slimkit.cli.common import DATA_OPT, INPUT_SIZE_OPT, MODEL_HELP, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT
from slimkit.errors import BadInputError

__all__ = ["register"]


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
    method_cfg = _distill_config(method, teacher, teacher_weight, temperature, alpha, beta, feature_layer)
    if relaunch_if_needed(nproc, "distill"):
        return
    from slimkit.cli.common import console, save_resolved_args
    from slimkit.compress.distill import distill as run_distill
    from slimkit.compress.distill.api import load_teacher
    from slimkit.engine.outputs import prepare_out_dir

    prepare_out_dir(out, resume=resume, overwrite=overwrite, write=False)  # fail before any heavy loading
    net, info, bundle = load_student(student, data=data, input_size=input_size, train_samples=train_samples,
                                     val_samples=val_samples, seed=cfg.seed, trust_code=trust_code, weights=weights)
    teachers = [load_teacher(spec, bundle, trust_code=trust_code, trainable=(method == "dml")) for spec in teacher]
    if method == "dml" and not teachers:  # a peer of the same architecture with different initial weights
        teachers = [load_student(student, data=data, input_size=input_size, train_samples=train_samples,
                                 val_samples=val_samples, seed=cfg.seed + 1, trust_code=trust_code)[:2]]
    # distill() builds the loss (feature layers checked) before fit() creates OUT: a bad input writes nothing.
    result = run_distill(net, teachers, method_cfg, data=bundle, train=cfg, out_dir=out, resume=resume,
                         overwrite=overwrite, info=info, teacher_names=list(teacher))
    if is_main_rank():
        save_resolved_args(out, "distill", {**args, "config": cfg.to_dict(), "input_size": bundle.input_size,
                                            "num_classes": bundle.num_classes})
        console().print(summary_line(result, out))


def _distill_config(method: str, teachers: list, weights: list, temperature, alpha, beta, layers: list):
    """The DistillConfig of the flags, checked before anything is loaded."""
    from slimkit.compress.distill.api import METHODS, DistillConfig, check_teachers

    if method not in METHODS:
        raise BadInputError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    config = DistillConfig(method, temperature, alpha, beta, list(weights), [_pair(p) for p in layers])
    check_teachers(config, len(teachers), noun="--teacher")
    return config


def _pair(text: str) -> tuple[str, str]:
    student, sep, teacher = text.partition(":")
    if not sep or not student or not teacher:
        raise BadInputError(f"--feature-layer wants STUDENT_LAYER:TEACHER_LAYER, got {text!r}")
    return student, teacher


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
