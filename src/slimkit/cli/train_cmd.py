"""`slimkit train MODEL --data digits --epochs N --out DIR [--resume] [--nproc N]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli._training import is_main_rank, load_student, relaunch_if_needed, resolve_config, summary_line
from slimkit.cli.common import DATA_OPT, INPUT_SIZE_OPT, MODEL_HELP, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT

__all__ = ["register", "TRAIN_FLAGS"]

# Options shared with `slimkit distill`: each maps onto a TrainConfig field of the same name.
TRAIN_FLAGS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "warmup_epochs", "schedule",
               "label_smoothing", "grad_clip", "seed", "bf16", "sync_bn", "num_workers", "device")

OUT_OPT = typer.Option(..., "--out", "-o", help="Run directory; ends as a model directory + metrics.json")
RESUME_OPT = typer.Option(False, "--resume", help="Continue the run in --out from its last completed epoch")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace a previous run in --out")
NPROC_OPT = typer.Option(None, "--nproc", help="Data-parallel processes (torchrun, gloo on CPU)")
CONFIG_OPT = typer.Option(None, "--config", help="TrainConfig as YAML/JSON; flags given here override it")
EPOCHS_OPT = typer.Option(None, "--epochs", min=1, help="Epochs (default 10)")
BATCH_OPT = typer.Option(None, "--batch-size", min=1, help="Global batch size over all processes (default 64)")
OPTIM_OPT = typer.Option(None, "--optimizer", help="adamw | sgd (default adamw)")
LR_OPT = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)")
WD_OPT = typer.Option(None, "--weight-decay", help="Decoupled (AdamW) or L2 (SGD) weight decay (default 0.01)")
MOMENTUM_OPT = typer.Option(None, "--momentum", help="SGD momentum (default 0.9)")
WARMUP_OPT = typer.Option(None, "--warmup-epochs", help="Linear warm-up length in epochs (default 0)")
SCHEDULE_OPT = typer.Option(None, "--schedule", help="cosine | constant (default cosine)")
SMOOTH_OPT = typer.Option(None, "--label-smoothing", help="Label smoothing (default 0)")
CLIP_OPT = typer.Option(None, "--grad-clip", help="Clip the global gradient norm to this value")
SEED_OPT = typer.Option(None, "--seed", help="Seed for weights init, shuffling and dropout (default 0)")
BF16_OPT = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (where the device supports it)")
SYNC_BN_OPT = typer.Option(None, "--sync-bn/--no-sync-bn", help="With --nproc: BatchNorm statistics over the global batch")
WORKERS_OPT = typer.Option(None, "--num-workers", min=0, help="DataLoader worker processes (default 0)")
DEVICE_OPT = typer.Option(None, "--device", help="auto | cpu | cuda[:N]")
WEIGHTS_OPT = typer.Option(None, "--weights", help="Initial weights (.safetensors, or a torch file read safely)")
TRUST_OPT = typer.Option(False, "--trust-code", help="Allow model directories built from user .py files")
PRETRAINED_OPT = typer.Option(False, "--pretrained", help="Start from pretrained weights (must be available locally)")


def train(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str = DATA_OPT,
    out: Path = OUT_OPT,
    resume: bool = RESUME_OPT,
    overwrite: bool = OVERWRITE_OPT,
    nproc: Optional[int] = NPROC_OPT,
    input_size: Optional[str] = INPUT_SIZE_OPT,
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    config: Optional[Path] = CONFIG_OPT,
    epochs: Optional[int] = EPOCHS_OPT,
    batch_size: Optional[int] = BATCH_OPT,
    optimizer: Optional[str] = OPTIM_OPT,
    lr: Optional[float] = LR_OPT,
    weight_decay: Optional[float] = WD_OPT,
    momentum: Optional[float] = MOMENTUM_OPT,
    warmup_epochs: Optional[float] = WARMUP_OPT,
    schedule: Optional[str] = SCHEDULE_OPT,
    label_smoothing: Optional[float] = SMOOTH_OPT,
    grad_clip: Optional[float] = CLIP_OPT,
    seed: Optional[int] = SEED_OPT,
    bf16: Optional[bool] = BF16_OPT,
    sync_bn: Optional[bool] = SYNC_BN_OPT,
    num_workers: Optional[int] = WORKERS_OPT,
    device: Optional[str] = DEVICE_OPT,
    weights: Optional[Path] = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    trust_code: bool = TRUST_OPT,
) -> None:
    """Train MODEL on --data; OUT ends as a model directory with metrics.json, train_log.jsonl and a checkpoint."""
    args = dict(locals())
    flags = {k: args[k] for k in TRAIN_FLAGS}
    # Bad settings fail here, before any process is launched; --resume starts from the checkpoint's settings.
    cfg = resolve_config(config, flags, resume_from=out if resume else None)
    if relaunch_if_needed(nproc, "train"):
        return
    from slimkit.cli.common import console, save_resolved_args
    from slimkit.engine import fit
    from slimkit.engine.outputs import prepare_out_dir

    prepare_out_dir(out, resume=resume, overwrite=overwrite, write=False)  # fail before any heavy loading
    net, info, bundle = load_student(model, data=data, input_size=input_size, train_samples=train_samples,
                                     val_samples=val_samples, seed=cfg.seed, trust_code=trust_code,
                                     pretrained=pretrained, weights=weights)
    prepare_out_dir(out, resume=resume, overwrite=overwrite, write=is_main_rank())
    if is_main_rank():
        save_resolved_args(out, "train", {**args, "config": cfg.to_dict(), "input_size": bundle.input_size,
                                          "num_classes": bundle.num_classes})
    result = fit(net, bundle, cfg, out_dir=out, resume=resume, overwrite=overwrite, info=info)
    if is_main_rank():
        console().print(summary_line(result, out))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
