"""fit(): train a model in place, checkpoint every epoch, resume exactly, finish as a model directory."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from slimkit.engine.checkpoint import (CHECKPOINT_FILE, capture_rng, data_fingerprint, load_checkpoint,
                                      restore_checkpoint, save_checkpoint)
from slimkit.engine.config import TrainConfig
from slimkit.engine.distributed import DistContext, gather_objects, param_digest, setup_distributed, sync_buffers_
from slimkit.engine.early_stop import EarlyStop
from slimkit.engine.evaluate import evaluate
from slimkit.engine.hooks import Hook, HookList, TrainState
from slimkit.engine.loop import TrainingDivergedError, default_loss, train_one_epoch
from slimkit.engine.optim import build_optimizer, build_scheduler
from slimkit.engine.outputs import BEST_FILE, finalize_outputs, prepare_out_dir
from slimkit.engine.progress import LOG_FILE, ProgressBar, RunLog
from slimkit.errors import BadInputError
from slimkit.utils.io import atomic_write_bytes

__all__ = ["fit", "FitResult", "TrainingDivergedError", "TrainData", "device_of"]

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


@dataclass
class TrainData:
    """In-memory training data for fit(): a train set and an optional val set (no per-epoch evaluation without)."""

    train: Any
    val: Any = None
    class_names: Sequence[str] = ()

    @classmethod
    def of(cls, data: Any) -> Any:
        """A DataBundle or TrainData as it is; a Dataset, or a pair of tensors (inputs, labels), as a train set."""
        if hasattr(data, "train"):
            return data
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            return cls(TensorDataset(*data))
        if isinstance(data, Dataset):
            return cls(data)
        raise BadInputError(f"data must be a DataBundle, a Dataset or (inputs, labels) tensors, got {type(data).__name__}")


def device_of(model: nn.Module) -> str:
    """The device `model`'s parameters live on, as a TrainConfig.device value (keeps fit from moving it)."""
    return str(next((p.device for p in model.parameters()), torch.device("cpu")))


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


def _wrap(model: nn.Module, ctx: DistContext, sync_bn: bool) -> nn.Module:
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        from slimkit.engine.sync_bn import convert_sync_batchnorm_

        log.info("BatchNorm statistics synchronised over %d ranks: %d layers", ctx.world_size,
                 convert_sync_batchnorm_(model))

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Buffers are synchronised once per epoch (sync_buffers_), not overwritten by rank 0's at every forward.
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def _revert_sync_bn(model: nn.Module) -> None:
    # Loaded only by a data-parallel run with sync_bn: without the module, no layer was converted.
    sync_bn = sys.modules.get("slimkit.engine.sync_bn")
    if sync_bn is not None:
        sync_bn.revert_sync_batchnorm_(model)


def _prepare_loss(loss_fn: Any, config: TrainConfig, device: torch.device) -> tuple[Any, list[nn.Parameter]]:
    """The loss to call and its trainable parameters (distillation adapters, a DML peer)."""
    if loss_fn is None:
        return default_loss(config.label_smoothing), []
    if not isinstance(loss_fn, nn.Module):
        return loss_fn, []
    loss_fn.to(device)
    if getattr(loss_fn, "label_smoothing", 0.0) is None:
        loss_fn.label_smoothing = config.label_smoothing
    return loss_fn, [p for p in loss_fn.parameters() if p.requires_grad]


class _Run:
    """One call of fit(): the training objects, the epoch loop and the outputs."""

    def __init__(self, model, data, config, hooks, out_dir, loss_fn, ctx, progress):
        self.model, self.data, self.config, self.hooks, self.ctx = model, data, config, hooks, ctx
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writes = self.out_dir is not None and ctx.is_main
        model.to(ctx.device)
        self.loss_fn, self.loss_params = _prepare_loss(loss_fn, config, ctx.device)
        self.loader, self.sampler = _loader(data.train, config, ctx)
        optimizer = build_optimizer([*model.parameters(), *self.loss_params], config)
        scheduler = build_scheduler(optimizer, config, len(self.loader))
        total = config.epochs * len(self.loader) if config.max_steps is None else min(
            config.epochs * len(self.loader), config.max_steps)
        self.state = TrainState(model, optimizer, scheduler, config, self.loss_fn, steps_per_epoch=len(self.loader),
                                total_steps=total, rank=ctx.rank, world_size=ctx.world_size)
        self.log = RunLog(self.out_dir / LOG_FILE if self.writes else None)
        self.net, self.bf16 = _wrap(model, ctx, config.sync_bn), _bf16_ok(ctx.device, config.bf16)
        self.epoch, self.history, self.last_eval = 0, [], {}
        self.early = EarlyStop(config.patience, config.min_delta, config.target_accuracy)
        self.best_state, self.best_eval = None, {}
        self.progress = progress and ctx.is_main
        self.fingerprint = data_fingerprint(data) if self.writes else None

    def start(self, resume: bool) -> None:
        if resume and (self.out_dir / CHECKPOINT_FILE).is_file():
            self._resume()
            self.log.truncate_after(self.epoch)
            self.log.write("resume", epoch=self.epoch, global_step=self.state.global_step)
        else:
            self.log.write("start", config=self.config.to_dict(), world_size=self.ctx.world_size,
                           num_train=len(self.data.train), num_val=_size(self.data.val))

    def _resume(self) -> None:
        path = self.out_dir / CHECKPOINT_FILE
        tensors, header = load_checkpoint(path)
        if header.get("data") not in (None, data_fingerprint(self.data)):
            raise BadInputError(f"cannot resume {self.out_dir}: the training data differ from the checkpoint's "
                                f"({header['data']['num_train']} vs {len(self.data.train)} images, or their content)")
        saved = TrainConfig.from_dict(header["config"])
        changed = self.config.differences(saved)
        if changed:
            detail = ", ".join(f"{k} {getattr(saved, k)!r} -> {getattr(self.config, k)!r}" for k in changed)
            raise BadInputError(f"cannot resume {self.out_dir}: settings differ from the checkpoint's ({detail})")
        s = self.state
        restore_checkpoint(tensors, header, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler,
                           loss_fn=s.loss_fn, rank=s.rank)
        self.hooks.load_state_dicts(header.get("hooks", []))
        s.global_step = int(header["global_step"])
        self.epoch, self.history = int(header["epoch"]), list(header.get("history", []))
        self.last_eval = dict(header.get("last_eval", {}))
        self._resume_best(header)

    def _resume_best(self, header: dict[str, Any]) -> None:
        """Early-stopping state from the history; the best epoch's weights from their own file."""
        c = self.config
        self.early = EarlyStop.replay([r.get("val_top1") for r in self.history], patience=c.patience,
                                      min_delta=c.min_delta, target=c.target_accuracy)
        self.state.stop_training = self.early.should_stop
        self.best_eval = dict(header.get("best_eval", {}))
        if c.keep_best and (self.out_dir / BEST_FILE).is_file():
            from safetensors.torch import load_file

            self.best_state = load_file(str(self.out_dir / BEST_FILE))

    def train(self) -> None:
        with ProgressBar(self.progress, self.config.epochs) as bar:
            while (self.epoch < self.config.epochs and not self.state.stop_training
                   and self.state.global_step < self.state.total_steps):
                self._one_epoch(bar)

    def _one_epoch(self, bar: ProgressBar) -> None:
        state, epoch = self.state, self.epoch
        state.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.hooks("on_epoch_begin", state)
        bar.start_epoch(epoch, len(self.loader))
        try:
            stats = train_one_epoch(self.net, state, self.loader, self.hooks, self.ctx, bar, self.loss_params,
                                    self.bf16)
        except TrainingDivergedError as exc:
            self.log.write("diverged", epoch=epoch + 1, step=state.step + 1, message=str(exc))
            kept = (f"last good checkpoint: {self.out_dir / CHECKPOINT_FILE} (epoch {epoch})"
                    if self.out_dir is not None and epoch else "no checkpoint was written yet")
            raise TrainingDivergedError(f"{exc}; {kept}") from None
        sync_buffers_(self.model, self.ctx)
        if self.data.val is not None:
            self.last_eval = evaluate(self.model, self.data.val, batch_size=self.config.eval_batch_size,
                                      device=self.ctx.device, bf16=self.bf16)
        record = {"epoch": epoch + 1, **stats.summary(self.ctx), "val_top1": self.last_eval.get("top1"),
                  "val_top5": self.last_eval.get("top5"), "val_loss": self.last_eval.get("loss"),
                  "lr": state.optimizer.param_groups[0]["lr"], "seconds": stats.seconds}
        state.metrics = record
        self.hooks("on_epoch_end", state)
        self.history.append(record)
        self.epoch += 1
        self._track_best(record)
        val = f"  val top-1 {record['val_top1']:.4f}" if record["val_top1"] is not None else ""
        bar.end_epoch(f"loss {record['train_loss']:.4f}{val}")
        self._checkpoint(record)

    def _track_best(self, record: dict[str, Any]) -> None:
        """Feed val top-1 to early stopping; keep the best epoch's weights (in memory and, with out_dir, on disk)."""
        if record["val_top1"] is None:
            return
        if self.early.update(record["val_top1"]) and self.config.keep_best:
            self.best_state = {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}
            self.best_eval = dict(self.last_eval)
            if self.writes:
                from safetensors.torch import save

                atomic_write_bytes(self.out_dir / BEST_FILE, save({k: v.contiguous() for k, v in self.best_state.items()}))
        if self.early.should_stop:
            self.state.stop_training = True

    def _stop_reason(self) -> str:
        if self.epoch >= self.config.epochs:
            return "cap"
        return "max_steps" if self.state.global_step >= self.state.total_steps else "hook"

    def _restore_best(self) -> dict[str, Any]:
        """Put the best epoch's weights back (keep_best); returns the stopping verdict for metrics.json."""
        verdict = self.early.verdict(self._stop_reason())
        restored = bool(self.config.keep_best and self.best_state is not None and verdict.best_epoch != self.epoch)
        if restored:
            self.model.load_state_dict(self.best_state)
            self.last_eval = dict(self.best_eval)
        line = verdict.warning(self.config.epochs)
        if line and self.ctx.is_main:
            log.info(line)  # callers say it once, in their own terms (slimkit train, the compress report)
        return {**verdict.to_dict(), "restored_best": restored, "not_converged_warning": line}

    def _checkpoint(self, record: dict[str, Any]) -> None:
        """Log the epoch, then replace the checkpoint atomically (a resume drops log lines it does not cover)."""
        if self.out_dir is None:
            return
        rng_states = gather_objects(capture_rng(), self.ctx)
        if self.writes:
            self.log.write("epoch", **record)
            s = self.state
            meta = {"epoch": self.epoch, "global_step": s.global_step, "config": self.config.to_dict(),
                    "data": self.fingerprint, "hooks": self.hooks.state_dicts(), "history": self.history,
                    "last_eval": self.last_eval, "best_eval": self.best_eval}
            save_checkpoint(self.out_dir / CHECKPOINT_FILE, model=self.model, optimizer=s.optimizer,
                            scheduler=s.scheduler, loss_fn=self.loss_fn, meta=meta, rng_states=rng_states)
        self.ctx.barrier()

    def finish(self, info: Any, extra: dict[str, Any]) -> FitResult:
        _revert_sync_bn(self.model)  # the saved and returned model holds plain BatchNorm layers
        self.model.eval()
        stopping = self._restore_best()
        metrics = {**self._metrics(), "early_stopping": stopping, **extra}
        if self.writes:
            finalize_outputs(self.model, info, self.data, self.out_dir, metrics)
            self.log.write("end", epochs_completed=self.epoch, accuracy=metrics["accuracy"])
        self.ctx.barrier()
        return FitResult(self.model, metrics, self.history, self.out_dir)

    def _metrics(self) -> dict[str, Any]:
        last, ev = (self.history[-1] if self.history else {}), self.last_eval
        metrics = {
            "accuracy": ev.get("top1"), "top5": ev.get("top5"), "val_loss": ev.get("loss"),
            "epochs_completed": self.epoch, "epochs": self.config.epochs,
            "train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
            "num_train": len(self.data.train), "num_val": _size(self.data.val),
            "confusion_matrix": ev.get("confusion_matrix"), "config": self.config.to_dict(),
        }
        if self.ctx.distributed:
            digests = gather_objects(param_digest(self.model), self.ctx)
            in_sync = len(set(digests)) == 1
            metrics["distributed"] = {"world_size": self.ctx.world_size, "param_digests": digests,
                                      "ranks_in_sync": in_sync}
            if not in_sync:
                log.warning("ranks ended with different weights: %s", digests)
        return metrics


def _checked(config: Any, data: Any, out_dir: Any, resume: bool) -> tuple[TrainConfig, Any]:
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise BadInputError(f"config must be a TrainConfig, got {type(config).__name__}")
    data = TrainData.of(data)
    if out_dir is not None and getattr(data, "val", None) is None:
        raise BadInputError("a run with out_dir needs validation data (data.val) for its metrics")
    if resume and out_dir is None:
        raise BadInputError("resume=True needs the out_dir that holds the checkpoint")
    return config, data


def _size(dataset: Any) -> int:
    return 0 if dataset is None else len(dataset)


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

    `data`: a DataBundle, a TrainData (val optional), a Dataset or (inputs, labels) tensors.

    With `out_dir`, every epoch ends with an atomic checkpoint and a train_log.jsonl
    record, and the run ends as a model directory (with `info`, the model's ModelInfo)
    plus metrics.json. `resume=True` continues from the last completed epoch and
    reaches the same weights as an uninterrupted run. `loss_fn(logits, targets)`
    defaults to cross-entropy with the config's label smoothing; a distiller
    (slimkit.compress.distill) also gets the inputs. Under torchrun (WORLD_SIZE > 1)
    it trains data-parallel and rank 0 writes the outputs. `extra_metrics` are added
    to metrics.json (e.g. the distillation settings).
    """
    config, data = _checked(config, data, out_dir, resume)
    ctx = setup_distributed(config.device)
    try:
        if out_dir is not None:
            prepare_out_dir(out_dir, resume=resume, overwrite=overwrite, write=ctx.is_main)
            ctx.barrier()
        # Each rank draws its own dropout masks; shuffling is seeded separately (by seed and epoch).
        with _deterministic(config.seed + ctx.rank):
            run = _Run(model, data, config, HookList(hooks), out_dir, loss_fn, ctx, progress)
            run.start(resume)
            run.train()
            return run.finish(info, extra_metrics or {})
    finally:
        _revert_sync_bn(model)
        ctx.close()
