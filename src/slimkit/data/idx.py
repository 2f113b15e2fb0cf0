"""Fashion-MNIST from the standard IDX files (`fashion-mnist[:PATH]`), gzipped or not.

IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number
of dimensions, each dimension as a big-endian uint32, then the values in row-major
order. Every header field and the file size are checked, so a truncated or foreign file
is reported by name instead of being reshaped into garbage.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from slimkit.data.base import register_source
from slimkit.errors import DataError

__all__ = ["DEFAULT_PATH", "FASHION_MNIST_CLASSES", "read_idx", "find_idx_file", "load_fashion_mnist"]

# Where Debian's dataset-fashion-mnist package installs the four .gz files.
DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        # Decide by content, not by name: some mirrors ship gzipped files without the .gz suffix.
        return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}") from exc


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions, validated, as a uint8 array."""
    path = Path(path)
    data = _read_bytes(path)
    bad = lambda why: DataError(f"{str(path)!r} is not a valid IDX file: {why}")  # noqa: E731
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise bad("bad magic number")
    if data[2] != _UBYTE:
        raise bad(f"value type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    if data[3] != ndim:
        raise bad(f"{data[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise bad("truncated header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise bad(f"{len(data)} bytes, header {dims} needs {expected} (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_file(root: Path, prefix: str, kind: str) -> Path:
    """`{prefix}-{kind}-ubyte` (kind idx3/idx1), also with `.` before kind or a .gz suffix."""
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = root / f"{prefix}{sep}{kind}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    raise DataError(f"fashion-mnist: no {prefix}-{kind}-ubyte[.gz] in {str(root)!r}")


def _load_split(root: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = find_idx_file(root, f"{prefix}-images", "idx3")
    labels_path = find_idx_file(root, f"{prefix}-labels", "idx1")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{str(images_path)!r} has {len(images)} images but {str(labels_path)!r} {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{str(labels_path)!r}: label {int(labels.max())} is out of range 0..9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@register_source("fashion-mnist")
def load_fashion_mnist(path: str | None, *, seed: int = 0, input_size=None):
    """The 60,000-image train set and the 10,000-image t10k set as val."""
    root = Path(path or DEFAULT_PATH).expanduser()
    if not root.is_dir():
        hint = " (install it: apt-get install dataset-fashion-mnist)" if path is None else ""
        raise DataError(f"fashion-mnist: directory {str(root)!r} not found{hint}")
    train_x, train_y = _load_split(root, "train")
    val_x, val_y = _load_split(root, "t10k")
    if train_x.shape[2:] != val_x.shape[2:]:
        raise DataError(f"fashion-mnist: train images are {tuple(train_x.shape[2:])}, t10k {tuple(val_x.shape[2:])}")
    return train_x, train_y, val_x, val_y, list(FASHION_MNIST_CLASSES)
