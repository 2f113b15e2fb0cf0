"""Class-per-subfolder images (`imagefolder:PATH`).

PATH/train/<class>/* and PATH/val/<class>/* (or validation/) are used as given when
both exist; otherwise PATH/<class>/* (or PATH/train/<class>/* alone) is split into
train/val by a fixed seed, per class. Images are decoded with PIL and resized to the
requested input size at load time, because files of different sizes cannot share one
uint8 tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from slimkit.data._images import IMAGE_EXTENSIONS, fixed_split, open_image, require_path, stack_images
from slimkit.data.base import register_source
from slimkit.errors import DataError

__all__ = ["list_classes", "list_images", "load_imagefolder"]

log = logging.getLogger(__name__)
VAL_DIR_NAMES = ("val", "validation")


def list_classes(root: Path) -> list[str]:
    """Sorted names of the visible subfolders of root."""
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {str(root)!r}: {exc}") from exc


def list_images(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files under root/<class>/ (recursively), sorted, with their class indices."""
    files, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        found = sorted(
            p for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )  # fmt: skip
        files.extend(found)
        labels.extend([index] * len(found))
    return files, np.asarray(labels, dtype=np.int64)


def _read_all(files: list[Path], labels: np.ndarray, input_size) -> tuple[torch.Tensor, torch.Tensor]:
    x = stack_images((open_image(f, input_size) for f in files), input_size)
    return x, torch.from_numpy(labels)


def _val_dir(root: Path) -> Path | None:
    return next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)


@register_source("imagefolder")
def load_imagefolder(path: str | None, *, seed: int = 0, input_size=(3, 32, 32)):
    root = require_path("imagefolder", path)
    if not root.is_dir():
        raise DataError(f"imagefolder: {str(root)!r} is not a directory")
    input_size = tuple(input_size)
    val_root = _val_dir(root)
    if (root / "train").is_dir() and val_root is not None:
        classes = list_classes(root / "train")
        extra = sorted(set(list_classes(val_root)) - set(classes))
        if extra:
            raise DataError(f"imagefolder: {str(val_root)!r} has classes missing from train/: {', '.join(extra)}")
        train_files, train_labels = list_images(root / "train", classes)
        val_files, val_labels = list_images(val_root, classes)
    else:
        # A train/ folder without a val/ beside it is the whole data set, split below.
        flat = root / "train" if (root / "train").is_dir() else root
        classes = list_classes(flat)
        files, labels = list_images(flat, classes)
        tr, va = fixed_split(labels)
        train_files, train_labels = [files[i] for i in tr], labels[tr]
        val_files, val_labels = [files[i] for i in va], labels[va]
    if not classes:
        raise DataError(f"imagefolder: {str(root)!r} has no class subfolders")
    log.info("imagefolder %s: %d train, %d val images, %d classes", root, len(train_files), len(val_files),
             len(classes))
    train_x, train_y = _read_all(train_files, train_labels, input_size)
    val_x, val_y = _read_all(val_files, val_labels, input_size)
    return train_x, train_y, val_x, val_y, classes
