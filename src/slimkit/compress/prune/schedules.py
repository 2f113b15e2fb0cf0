"""The schedules behind `prune_`: one-shot, iterative, LAPP and PreCropping, with training and weight sparsity.

`prune_(model, config, ..., data=...)` lands here whenever more than one structured cut is asked
for: a schedule other than one-shot, training (`config.epochs`, through engine.fit), unstructured
sparsity, or no example inputs. Every schedule measures MACs and parameters before and after
itself, so the result reads the same whatever the technique.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from slimkit.compress.prune.api import PruneResult, kept_ratios, layer_widths, prune_
from slimkit.compress.prune.config import PruneConfig
from slimkit.compress.prune.criteria import Calibration, criterion_needs_data
from slimkit.compress.prune.measure import count_macs, count_params
from slimkit.errors import BadInputError

__all__ = ["run_schedule", "UNSTRUCTURED_NOTE"]

UNSTRUCTURED_NOTE = (
    "Unstructured sparsity gives no speed-up on dense runtimes (PyTorch, ONNX Runtime): the zeros are still "
    "multiplied, so latency_ms and MACs do not move. Its real gain is storage: see unstructured.file_bytes."
)


def _example(model: nn.Module, example_inputs: torch.Tensor | None, data: Any) -> torch.Tensor:
    from slimkit.models.resolve import declared_input_size

    if example_inputs is not None:
        return example_inputs[:1].detach()
    size = getattr(data, "input_size", None) or declared_input_size(model)
    if size is None:
        raise BadInputError("prune_ needs example_inputs, or data / a model that states its input size")
    return torch.randn(1, *size)


def _splits(data: Any) -> tuple[Dataset | None, Dataset | None]:
    if data is None or hasattr(data, "train"):
        return getattr(data, "train", None), getattr(data, "val", None)
    return data, None


def run_schedule(model: nn.Module, config: PruneConfig, example_inputs: torch.Tensor | None,
                 calib: Calibration | None, *, data: Any = None, progress: bool = False) -> PruneResult:
    """Prune `model` in place with `config.schedule`, train and sparsify as configured; returns the result."""
    from slimkit.compress.prune.training import calibration_batches

    x = _example(model, example_inputs, data)
    train, val = _splits(data)
    if config.epochs > 0 and train is None:
        raise BadInputError(f"pruning with epochs={config.epochs:g} trains: pass data")
    if calib is None and criterion_needs_data(config.criterion) and train is not None:
        calib = Calibration(calibration_batches(train, config.calib_batches, seed=config.seed))
    one_cut = replace(config, schedule="oneshot", epochs=0.0, unstructured=None, kd=False)
    teacher = copy.deepcopy(model).eval() if config.kd else None
    before, widths = {"macs": count_macs(model, x), "params": count_params(model)}, layer_widths(model)
    if config.schedule == "iterative":
        result = _iterative(model, config, one_cut, x, calib, train, val)
    elif config.schedule == "lapp":
        result = _lapp(model, config, x, train, teacher)
    elif config.schedule == "precrop":
        from slimkit.compress.prune.precrop import precrop_

        result = precrop_(model, one_cut, x)
    elif config.target is not None or config.ratio:
        result = prune_(model, one_cut, x, calib)
    else:
        result = PruneResult(None, before, before, None, 0.0, 1, {})  # only weight sparsity was asked for
    dense = _file_sizes(model) if config.unstructured else None  # after the channels went, before the zeros
    if config.schedule in ("oneshot", "precrop"):
        result.training = _train(model, config, train, val, teacher, progress)
    result.unstructured = _sparsify(model, config, dense, gradual=result.training is not None)
    return _finish(result, model, config, x, before, widths)


def _iterative(model, config, one_cut, x, calib, train, val) -> PruneResult:
    from slimkit.compress.prune.iterative import iterative_prune_

    stages = iterative_prune_(model, one_cut, x, train, steps=config.steps, epochs_per_step=config.epochs / config.steps,
                              kd=config.kd, lr=config.lr, val=val, calib=calib)
    result = PruneResult(config.target, {}, {}, None, None, config.round_to or 1, {}, stages=stages)
    result.training = {"epochs": config.epochs, "lr": config.lr, "kd": config.kd, "loss": stages[-1]["loss"],
                       "accuracy": stages[-1]["accuracy"]}
    return result


def _lapp(model, config, x, train, teacher) -> PruneResult:
    from slimkit.compress.prune.lapp import lapp_train_

    info = lapp_train_(model, train, config.parsed_target.ratio, config.epochs, x, lr=config.lr,
                       batch_size=config.batch_size, seed=config.seed, teacher=teacher)
    result = PruneResult(config.target, {}, {}, None, None, 1, {}, stages=[info])
    result.training = {"epochs": config.epochs, "lr": config.lr, "kd": config.kd, "loss": info["loss"]}
    return result


def _train(model, config, train, val, teacher, progress) -> dict[str, Any] | None:
    """Fine-tune after the cut (with gradual weight sparsity when asked); None without epochs."""
    from slimkit.compress.prune.training import finetune
    from slimkit.compress.prune.unstructured import GradualPruner
    from slimkit.engine import EveryStep

    if config.epochs <= 0:
        return None
    hooks = []
    if config.unstructured:
        steps = math.ceil(config.epochs * math.ceil(len(train) / config.batch_size))
        hooks.append(EveryStep(GradualPruner(model, config.unstructured, steps, config.unstructured_scope)))
    info = finetune(model, train, config.epochs, lr=config.lr, batch_size=config.batch_size, teacher=teacher,
                    hooks=hooks, seed=config.seed, val=val, progress=progress)
    return {**info, "epochs": config.epochs, "lr": config.lr, "kd": config.kd}


def _file_sizes(model: nn.Module) -> dict[str, int]:
    from slimkit.compress.prune.unstructured import compressed_sizes

    return compressed_sizes(model)


def _sparsify(model: nn.Module, config: PruneConfig, dense: dict | None, gradual: bool) -> dict[str, Any] | None:
    """Fold the final magnitude masks into the weights; the file sizes show what sparsity buys."""
    from slimkit.compress.prune.unstructured import apply_masks, magnitude_masks, prunable_weights, sparsity_of

    if not config.unstructured:
        return None
    weights = prunable_weights(model)
    apply_masks(weights, magnitude_masks(weights, config.unstructured, config.unstructured_scope))
    return {"sparsity": sparsity_of(model), "scope": config.unstructured_scope,
            "schedule": "polynomial (Zhu & Gupta)" if gradual else "one-shot",
            "file_bytes": {"dense": dense, "sparse": _file_sizes(model)}, "note": UNSTRUCTURED_NOTE}


def _finish(result: PruneResult, model, config, x, before, widths) -> PruneResult:
    model.eval()
    after = {"macs": count_macs(model, x), "params": count_params(model)}
    target = config.parsed_target
    result.schedule, result.before, result.after = config.schedule, before, after
    result.kept = kept_ratios(widths, layer_widths(model))
    if target is not None and target.kind != "latency":
        result.achieved = after[target.kind] / before[target.kind]
    return result
