"""CIFAR-10 from the standard python batches (`cifar10:PATH`), read without running pickled code.

The official `cifar-10-batches-py` files are Python 2 cPickle dicts (protocol 2) with
byte-string keys: `data` a uint8 (N, 3072) numpy array, `labels` a list of ints, and
`batches.meta` with `label_names`. Rebuilding the array needs exactly three globals
(numpy's `_reconstruct`, `ndarray` and `dtype`); the unpickler below resolves those
and refuses every other global, so a crafted file cannot call anything else.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.data._images import require_path
from slimkit.data.base import register_source
from slimkit.errors import DataError, UnsafeFileError

__all__ = ["CIFAR10_CLASSES", "RestrictedUnpickler", "safe_load_pickle", "read_batch", "load_cifar10"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_DIR_NAME = "cifar-10-batches-py"
_PIXELS = 3 * 32 * 32


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        # An object array would let the pickle smuggle arbitrary Python objects into the data.
        raise UnsafeFileError(f"pickle asks for object dtype {dtype}, refused")
    return dtype


# The module path numpy pickles name depends on the numpy that wrote them (numpy.core
# before 2.0, numpy._core since); both map to the objects this numpy actually has.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy's array-rebuilding globals."""

    def __init__(self, file, name: str = "pickle") -> None:
        super().__init__(file, encoding="bytes")
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFileError(f"{self.name}: refusing to load global {module}.{name} from a pickle") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.name}: refusing persistent id in a pickle")


def safe_load_pickle(path: Path) -> Any:
    """Unpickle a data file with RestrictedUnpickler; malformed files raise DataError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
    try:
        return RestrictedUnpickler(io.BytesIO(raw), str(path)).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # any parse failure in a foreign/corrupt file is a data problem
        raise DataError(f"{str(path)!r} is not a readable CIFAR pickle: {type(exc).__name__}: {exc}") from exc


def _field(batch: Any, key: str, path: Path) -> Any:
    if not isinstance(batch, dict):
        raise DataError(f"{str(path)!r}: expected a dict, got {type(batch).__name__}")
    for k in (key.encode(), key):  # Python 2 files have byte keys; re-saved ones may have str keys
        if k in batch:
            return batch[k]
    raise DataError(f"{str(path)!r}: no {key!r} entry")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One data batch as (N, 3, 32, 32) uint8 images and int64 labels."""
    batch = safe_load_pickle(path)
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(f"{str(path)!r}: 'data' must be a uint8 array of shape (N, {_PIXELS}), got {shape}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{str(path)!r}: 'labels' is not a list of integers") from exc
    if y.shape != (len(data),):
        raise DataError(f"{str(path)!r}: {len(data)} images but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{str(path)!r}: labels must be in 0..9")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


def _class_names(root: Path) -> list[str]:
    meta_path = root / "batches.meta"
    if not meta_path.is_file():
        return list(CIFAR10_CLASSES)
    names = _field(safe_load_pickle(meta_path), "label_names", meta_path)
    if not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES):
        raise DataError(f"{str(meta_path)!r}: 'label_names' must list {len(CIFAR10_CLASSES)} names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _data_batches(root: Path) -> list[Path]:
    found = [p for p in root.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[1]))


@register_source("cifar10")
def load_cifar10(path: str | None, *, seed: int = 0, input_size=None):
    """data_batch_1..5 as train, test_batch as val; PATH may be the batches folder or its parent."""
    root = require_path("cifar10", path)
    if (root / _DIR_NAME).is_dir():
        root = root / _DIR_NAME
    batches = _data_batches(root)
    if not batches:
        raise DataError(f"cifar10: no data_batch_N files in {str(root)!r}")
    if not (root / "test_batch").is_file():
        raise DataError(f"cifar10: no test_batch in {str(root)!r}")
    parts = [read_batch(p) for p in batches]
    train_x, train_y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    val_x, val_y = read_batch(root / "test_batch")
    return train_x, train_y, val_x, val_y, _class_names(root)
