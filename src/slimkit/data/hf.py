"""A Hugging Face dataset saved with `save_to_disk` (`hf:PATH`).

PATH holds a DatasetDict (train plus validation/val/valid/test) or a single Dataset,
which is split into train/val by a fixed seed, per class. The image column is the one
whose feature type is `Image`; the label column is a `ClassLabel` (whose names become
the class names) or an integer column named `label`/`labels`. `datasets` is imported
only here, when this source is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.data._images import fixed_split, pil_to_array, require_path, stack_images
from slimkit.data.base import register_source
from slimkit.errors import DataError

__all__ = ["VAL_SPLITS", "find_columns", "load_hf"]

VAL_SPLITS = ("validation", "val", "valid", "test")
_BATCH = 256


def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise DataError("hf: needs the `datasets` package (pip install datasets)") from exc
    return datasets


def find_columns(features: Any) -> tuple[str, str, list[str] | None]:
    """(image column, label column, class names or None) from a dataset's features."""
    datasets = _import_datasets()
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise DataError(f"hf: no column of type Image (columns: {', '.join(features)})")
    class_labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if class_labels:
        label = "label" if "label" in class_labels else class_labels[0]
        return images[0], label, list(features[label].names)
    for name in ("label", "labels"):
        f = features.get(name)
        if isinstance(f, datasets.Value) and f.dtype.startswith(("int", "uint")):
            return images[0], name, None
    raise DataError("hf: no label column (a ClassLabel, or an integer column named 'label')")


def _read_split(ds: Any, image_col: str, label_col: str, input_size, where: str):
    missing = sorted({image_col, label_col} - set(ds.column_names))
    if missing:
        raise DataError(f"hf: {where} split lacks column(s) {', '.join(missing)}")
    arrays, labels = [], []
    for batch in ds.select_columns([image_col, label_col]).iter(batch_size=_BATCH):
        for i, img in enumerate(batch[image_col]):
            if img is None:
                raise DataError(f"hf: {where} row {len(arrays)} has no image")
            arrays.append(pil_to_array(img, input_size, f"{where} row {len(arrays)}"))
            labels.append(batch[label_col][i])
    y = np.asarray(labels, dtype=np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"hf: {where} has unlabelled rows (label {int(y.min())})")
    return stack_images(arrays, input_size), torch.from_numpy(y)


def _pick_splits(obj: Any, root: Path):
    """(train, val or None) from a loaded Dataset or DatasetDict."""
    datasets = _import_datasets()
    if isinstance(obj, datasets.Dataset):
        return obj, None
    if "train" not in obj:
        raise DataError(f"hf: {str(root)!r} has no 'train' split (splits: {', '.join(obj) or 'none'})")
    val_name = next((s for s in VAL_SPLITS if s in obj), None)
    return obj["train"], (obj[val_name] if val_name else None)


@register_source("hf")
def load_hf(path: str | None, *, seed: int = 0, input_size=(3, 32, 32)):
    root = require_path("hf", path)
    datasets = _import_datasets()
    try:
        obj = datasets.load_from_disk(str(root))
    except FileNotFoundError as exc:
        raise DataError(f"hf: {str(root)!r} is not a dataset saved with save_to_disk: {exc}") from exc
    except Exception as exc:  # datasets/pyarrow raise many types on damaged or zero-row saves
        raise DataError(f"hf: cannot load {str(root)!r}: {type(exc).__name__}: {exc}") from exc
    train, val = _pick_splits(obj, root)
    image_col, label_col, names = find_columns(train.features)
    input_size = tuple(input_size)
    train_x, train_y = _read_split(train, image_col, label_col, input_size, "train")
    if val is None:
        tr, va = fixed_split(train_y.numpy())
        train_x, train_y, val_x, val_y = train_x[tr], train_y[tr], train_x[va], train_y[va]
    else:
        val_x, val_y = _read_split(val, image_col, label_col, input_size, "val")
    top = max((int(y.max()) for y in (train_y, val_y) if len(y)), default=-1)
    if names is None:
        names = [str(i) for i in range(top + 1)]
    elif top >= len(names):
        raise DataError(f"hf: label {top} is outside the {len(names)} class names")
    return train_x, train_y, val_x, val_y, names
