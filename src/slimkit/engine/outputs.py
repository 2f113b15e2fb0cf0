"""The run directory: refuse to clobber a previous run, and finish as a model directory + metrics.json.

Layout of OUT after `slimkit train ... --out OUT`:
  architecture.json, model.safetensors   the model directory (slimkit.models.save_model_dir)
  metrics.json                           accuracy (val top-1, 0..1), epochs_completed, ...
  train_log.jsonl                        one JSON record per event (start, epoch, resume, end)
  checkpoint.safetensors                 training state of the last completed epoch (for --resume)
  args.json                              the CLI's resolved arguments
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from slimkit.engine.checkpoint import CHECKPOINT_FILE
from slimkit.engine.progress import LOG_FILE
from slimkit.errors import BadInputError
from slimkit.utils.io import atomic_write_json

__all__ = ["METRICS_FILE", "BEST_FILE", "prepare_out_dir", "finalize_outputs", "model_info_for"]

METRICS_FILE = "metrics.json"
_ARCH, _WEIGHTS = "architecture.json", "model.safetensors"
BEST_FILE = "best.safetensors"  # the best val epoch's weights, for a resumed keep_best run
_RUN_FILES = (CHECKPOINT_FILE, _ARCH, _WEIGHTS, METRICS_FILE, LOG_FILE, BEST_FILE)


def prepare_out_dir(out_dir: str | Path, *, resume: bool, overwrite: bool, write: bool = True) -> Path:
    """Check that `out_dir` may be written: a previous run there needs --resume or --overwrite.

    With write=False only the check runs; with write=True an --overwrite clears the old
    run's files and the directory is created (rank 0 only, under torchrun).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"--out {out_dir} exists and is not a directory")
    existing = [name for name in _RUN_FILES if (out_dir / name).exists()]
    if existing and not (resume or overwrite):
        raise BadInputError(f"{out_dir} already holds a run ({existing[0]}); pass --resume to continue it, "
                            "--overwrite to replace it, or choose another --out")
    if resume and existing and CHECKPOINT_FILE not in existing:
        raise BadInputError(f"--resume: {out_dir} holds {existing[0]} but no {CHECKPOINT_FILE} to continue from; "
                            "pass --overwrite to start over")
    if overwrite and not resume and write:
        for name in existing:
            (out_dir / name).unlink()
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def model_info_for(model: nn.Module, info: Any, data: Any) -> Any:
    """The ModelInfo to save: the model's own, updated with the classes and input format it was trained on."""
    from slimkit.models import ModelInfo

    if info is None:
        # Not rebuildable by load_model_dir (no recorded constructor), but the weights and shapes are saved.
        info = ModelInfo(source="module", name=type(model).__name__)
    changes: dict[str, Any] = {"class_names": list(data.class_names), "num_classes": len(data.class_names)}
    for key in ("input_size", "mean", "std"):
        value = getattr(data, key, None)
        if value is not None:
            changes[key] = tuple(value)
    return dataclasses.replace(info, **changes)


def finalize_outputs(model: nn.Module, info: Any, data: Any, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Write the model directory files into `out_dir` beside the log and checkpoint, then metrics.json.

    Each file lands by atomic rename; architecture.json is removed first and written
    after the weights, so OUT is never a model directory whose files disagree.
    """
    from slimkit.models import save_model_dir

    info = model_info_for(model, info, data)
    staging = Path(tempfile.mkdtemp(prefix=".model.", suffix=".partial", dir=out_dir))
    try:
        save_model_dir(model, info, staging / "model")
        (out_dir / _ARCH).unlink(missing_ok=True)
        os.replace(staging / "model" / _WEIGHTS, out_dir / _WEIGHTS)
        os.replace(staging / "model" / _ARCH, out_dir / _ARCH)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(out_dir / METRICS_FILE, metrics)
