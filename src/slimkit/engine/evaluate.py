"""evaluate(): top-1, top-5, mean cross-entropy and the confusion matrix of a classifier on a dataset."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from slimkit.errors import BadInputError

__all__ = ["evaluate", "logits_of"]


def logits_of(output: Any) -> torch.Tensor:
    """The class logits from a model output (tuples/lists: the first element; dicts: 'logits')."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    raise BadInputError(f"cannot find class logits in a model output of type {type(output).__name__}")


def _dataset_of(data: Any) -> Dataset:
    # A DataBundle (or anything with .val) is evaluated on its validation split.
    return getattr(data, "val", data)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """Measure `model` (unchanged; its train/eval mode is restored) on `dataset` or a DataBundle's val split.

    Returns top1 and top5 (fractions in [0, 1]; top5 is top-min(5, classes)), loss
    (mean cross-entropy), num_samples, and confusion_matrix[true][predicted] (counts).
    """
    dataset = _dataset_of(dataset)
    if len(dataset) == 0:
        raise BadInputError("cannot evaluate on an empty dataset")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    confusion: torch.Tensor | None = None
    try:
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = logits_of(model(inputs)).float()
            classes = logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(classes, classes, dtype=torch.long)
            if int(targets.max()) >= classes:
                raise BadInputError(f"labels go up to {int(targets.max())} but the model has {classes} outputs")
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            k = min(5, classes)
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == targets).sum())
            top5 += int((best == targets[:, None]).any(dim=1).sum())
            seen += len(targets)
            flat = targets.cpu() * classes + best[:, 0].cpu()
            confusion += torch.bincount(flat, minlength=confusion.numel()).view_as(confusion)
    finally:
        model.train(was_training)
    return {
        "top1": top1 / seen,
        "top5": top5 / seen,
        "loss": loss_sum / seen,
        "num_samples": seen,
        "confusion_matrix": confusion.tolist(),
    }
