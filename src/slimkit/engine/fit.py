"""fit(): train a model in place, checkpoint every epoch, resume exactly, finish as a model directory."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from slimkit.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_checkpoint, save_checkpoint
from slimkit.engine.config import TrainConfig
from slimkit.engine.distributed import DistContext, setup_distributed
from slimkit.engine.evaluate import evaluate
from slimkit.engine.hooks import Hook, HookList, TrainState
from slimkit.engine.loop import TrainingDivergedError, default_loss, train_one_epoch
from slimkit.engine.optim import build_optimizer, build_scheduler
from slimkit.engine.outputs import finalize_outputs, prepare_out_dir
from slimkit.engine.progress import LOG_FILE, ProgressBar, RunLog
from slimkit.errors import BadInputError

__all__ = ["fit", "FitResult", "TrainingDivergedError"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    model: nn.Module
    metrics: dict[str, Any]  # what metrics.json holds: accuracy (val top-1), epochs_completed, ...
    history: list[dict[str, Any]]  # one record per completed epoch
    out_dir: Path | None = None

    @property
    def epochs_completed(self) -> int:
        return int(self.metrics["epochs_completed"])


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed every RNG and ask torch for deterministic kernels, restoring the global flag afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _bf16_ok(device: torch.device, wanted: bool) -> bool:
    if not wanted:
        return False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 autocast requested but %s does not support bf16; training in fp32", device)
        return False
    return True


def _loader(train: Any, config: TrainConfig, ctx: DistContext) -> tuple[DataLoader, DistributedSampler]:
    if config.batch_size % ctx.world_size:
        raise BadInputError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes")
    if len(train) == 0:
        raise BadInputError("the training set is empty")
    # The same seeded sampler for 1 or N processes: N ranks together see exactly the
    # global batches one process would see, and the order depends only on (seed, epoch).
    sampler = DistributedSampler(train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(train, batch_size=config.batch_size // ctx.world_size, sampler=sampler,
                        num_workers=config.num_workers, drop_last=config.drop_last)
    if len(loader) == 0:
        raise BadInputError(f"drop_last with batch_size {config.batch_size} leaves no batch of {len(train)} images")
    return loader, sampler


def _wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def data_fingerprint(data: Any) -> dict[str, Any]:
    """Sizes and a sha256 of the training images and labels: a resumed run must see the same data."""
    import hashlib

    fingerprint: dict[str, Any] = {"num_train": len(data.train), "num_val": len(data.val)}
    images, labels = getattr(data.train, "images", None), getattr(data.train, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        digest = hashlib.sha256(images.contiguous().numpy().tobytes())
        digest.update(labels.contiguous().numpy().tobytes())
        fingerprint["train_sha256"] = digest.hexdigest()
    return fingerprint


def _resume(out_dir: Path, config: TrainConfig, state: TrainState, hooks: HookList, data: Any) -> tuple[int, list, dict]:
    """Load the checkpoint into the run; returns (epochs done, history, last evaluation)."""
    tensors, header = load_checkpoint(out_dir / CHECKPOINT_FILE)
    if header.get("data") not in (None, data_fingerprint(data)):
        raise BadInputError(f"cannot resume {out_dir}: the training data differ from the checkpoint's "
                            f"({header['data']['num_train']} vs {len(data.train)} images, or other content)")
    saved = TrainConfig.from_dict(header["config"])
    changed = config.differences(saved)
    if changed:
        detail = ", ".join(f"{k} {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise BadInputError(f"cannot resume {out_dir}: settings differ from the checkpoint's ({detail})")
    restore_checkpoint(tensors, header, model=state.model, optimizer=state.optimizer, scheduler=state.scheduler,
                       loss_fn=state.loss_fn, rank=state.rank)
    hooks.load_state_dicts(header.get("hooks", []))
    state.global_step = int(header["global_step"])
    return int(header["epoch"]), list(header.get("history", [])), dict(header.get("last_eval", {}))


def fit(
    model: nn.Module,
    data: Any,
    config: TrainConfig | None = None,
    *,
    hooks: Sequence[Hook] | Hook | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    loss_fn: Any = None,
    info: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    extra_metrics: dict[str, Any] | None = None,
) -> FitResult:
    """Train `model` in place (left in eval mode) on data.train, evaluating on data.val every epoch.

    With `out_dir`, every epoch ends with an atomic checkpoint and a train_log.jsonl
    record, and the run ends as a model directory with metrics.json. `resume=True`
    continues from the last completed epoch and reaches the same weights as an
    uninterrupted run. `loss_fn(logits, targets)` defaults to cross-entropy with the
    config's label smoothing; a distiller (slimkit.compress.distill) also gets the inputs.
    Under torchrun (WORLD_SIZE > 1) it trains data-parallel; rank 0 writes the outputs.
    `extra_metrics` are added to metrics.json (e.g. the distillation settings).
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise BadInputError(f"config must be a TrainConfig, got {type(config).__name__}")
    ctx = setup_distributed(config.device)
    try:
        # Each rank draws its own dropout masks; shuffling is seeded separately (by seed and epoch).
        with _deterministic(config.seed + ctx.rank):
            result = _fit(model, data, config, HookList(hooks), out_dir, resume, loss_fn, info, overwrite,
                          progress, ctx, extra_metrics or {})
            return result
    finally:
        ctx.close()


def _fit(model, data, config, hooks, out_dir, resume, loss_fn, info, overwrite, progress, ctx, extra) -> FitResult:
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        prepare_out_dir(out_dir, resume=resume, overwrite=overwrite, write=ctx.is_main)
        ctx.barrier()
    model.to(ctx.device)
    if loss_fn is None:
        loss_fn = default_loss(config.label_smoothing)
    elif isinstance(loss_fn, nn.Module):
        loss_fn.to(ctx.device)
        if getattr(loss_fn, "label_smoothing", 0.0) is None:
            loss_fn.label_smoothing = config.label_smoothing
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad] if isinstance(loss_fn, nn.Module) else []
    loader, sampler = _loader(data.train, config, ctx)
    optimizer = build_optimizer([*model.parameters(), *loss_params], config)
    scheduler = build_scheduler(optimizer, config, len(loader))
    state = TrainState(model, optimizer, scheduler, config, loss_fn, steps_per_epoch=len(loader),
                       rank=ctx.rank, world_size=ctx.world_size)
    run_log = RunLog(out_dir / LOG_FILE if out_dir is not None and ctx.is_main else None)
    start_epoch, history, last_eval = 0, [], {}
    if resume and out_dir is not None and (out_dir / CHECKPOINT_FILE).is_file():
        start_epoch, history, last_eval = _resume(out_dir, config, state, hooks, data)
        run_log.truncate_after(start_epoch)
        run_log.write("resume", epoch=start_epoch, global_step=state.global_step)
    else:
        run_log.write("start", config=config.to_dict(), world_size=ctx.world_size, num_train=len(data.train),
                      num_val=len(data.val))
    fingerprint = data_fingerprint(data) if out_dir is not None and ctx.is_main else None
    net = _wrap(model, ctx)
    bf16 = _bf16_ok(ctx.device, config.bf16)
    epoch = start_epoch
    with ProgressBar(progress and ctx.is_main, config.epochs) as bar:
        while epoch < config.epochs and not state.stop_training:
            state.epoch = epoch
            sampler.set_epoch(epoch)
            hooks("on_epoch_begin", state)
            bar.start_epoch(epoch, len(loader))
            try:
                stats = train_one_epoch(net, state, loader, hooks, ctx, bar, loss_params, bf16)
            except TrainingDivergedError as exc:
                run_log.write("diverged", epoch=epoch + 1, step=state.step + 1, message=str(exc))
                kept = f"last good checkpoint: {out_dir / CHECKPOINT_FILE} (epoch {epoch})" if out_dir and epoch else (
                    "no checkpoint was written yet")
                raise TrainingDivergedError(f"{exc}; {kept}") from None
            last_eval = evaluate(model, data.val, batch_size=config.eval_batch_size, device=ctx.device, bf16=bf16)
            record = {"epoch": epoch + 1, **stats.summary(ctx), "val_top1": last_eval["top1"],
                      "val_top5": last_eval["top5"], "val_loss": last_eval["loss"],
                      "lr": optimizer.param_groups[0]["lr"], "seconds": stats.seconds}
            state.metrics = record
            hooks("on_epoch_end", state)
            history.append(record)
            epoch += 1
            bar.end_epoch(f"loss {record['train_loss']:.4f}  val top-1 {record['val_top1']:.4f}")
            rng_states = _gather_rng(ctx) if out_dir is not None else None
            if out_dir is not None and ctx.is_main:
                run_log.write("epoch", **record)
                meta = {"epoch": epoch, "global_step": state.global_step, "config": config.to_dict(),
                        "data": fingerprint,
                        "hooks": hooks.state_dicts(), "history": history, "last_eval": last_eval}
                save_checkpoint(out_dir / CHECKPOINT_FILE, model=model, optimizer=optimizer, scheduler=scheduler,
                                loss_fn=loss_fn, meta=meta, rng_states=rng_states)
            ctx.barrier()
    model.eval()
    metrics = {**_metrics(last_eval, history, epoch, config, data, ctx, model), **extra}
    if out_dir is not None and ctx.is_main:
        finalize_outputs(model, info, data, out_dir, metrics)
        run_log.write("end", epochs_completed=epoch, accuracy=metrics["accuracy"])
    ctx.barrier()
    return FitResult(model, metrics, history, out_dir)


def _gather_rng(ctx: DistContext) -> list:
    """Every rank's RNG states, so that a resumed data-parallel run draws the same dropout masks."""
    from slimkit.engine.checkpoint import capture_rng

    mine = capture_rng()
    if not ctx.distributed:
        return [mine]
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def _metrics(last_eval: dict, history: list, epochs_done: int, config: TrainConfig, data: Any, ctx: DistContext,
             model: nn.Module) -> dict[str, Any]:
    from slimkit.engine.distributed import param_digest

    last = history[-1] if history else {}
    metrics = {
        "accuracy": last_eval.get("top1"),
        "top5": last_eval.get("top5"),
        "val_loss": last_eval.get("loss"),
        "epochs_completed": epochs_done,
        "epochs": config.epochs,
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "num_train": len(data.train),
        "num_val": len(data.val),
        "confusion_matrix": last_eval.get("confusion_matrix"),
        "config": config.to_dict(),
    }
    if ctx.distributed:
        digests: list[Any] = [None] * ctx.world_size
        torch.distributed.all_gather_object(digests, param_digest(model))
        metrics["distributed"] = {"world_size": ctx.world_size, "param_digests": digests,
                                  "ranks_in_sync": len(set(digests)) == 1}
        if len(set(digests)) != 1:
            log.warning("ranks ended with different weights: %s", digests)
    return metrics
