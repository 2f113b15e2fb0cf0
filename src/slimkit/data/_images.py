"""PIL helpers shared by the sources that read image files (imagefolder, hf)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from slimkit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "pil_to_array", "open_image", "stack_images", "require_path", "fixed_split"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
VAL_FRACTION = 0.2
SPLIT_SEED = 1234  # fixed, like digits: a different --seed must not move images between train and val


def require_path(source: str, path: str | None) -> Path:
    """The source's PATH as an existing Path, or a DataError naming what is missing."""
    if not path:
        raise DataError(f"data source {source!r} needs a path: --data {source}:PATH")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{source}: path {str(p)!r} does not exist")
    return p


def pil_to_array(img, input_size: tuple[int, int, int], name: str = "image") -> np.ndarray:
    """One PIL image as a uint8 (C, H, W) array at the input size: grey if C == 1, else RGB."""
    from PIL import Image

    c, h, w = input_size
    try:
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            # PIL's bilinear filter widens its support when shrinking, so downscaling is antialiased.
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode {name}: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def open_image(path: Path, input_size: tuple[int, int, int]) -> np.ndarray:
    """Read one image file as a uint8 (C, H, W) array at the input size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return pil_to_array(img, input_size, str(path))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from exc


def stack_images(arrays: Iterable[np.ndarray], input_size: tuple[int, int, int]) -> torch.Tensor:
    """(N, C, H, W) uint8 tensor; an empty iterable gives N = 0 with the right shape."""
    arrays = list(arrays)
    c, h, w = input_size
    if not arrays:
        return torch.zeros((0, 1 if c == 1 else 3, h, w), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def fixed_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train/val split stratified by class, so every class with 2+ images is in both."""
    from slimkit.data.base import split_indices

    train, val = [], []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        if len(members) < 2:
            train.append(members)
            continue
        tr, va = split_indices(len(members), VAL_FRACTION, SPLIT_SEED + int(k))
        train.append(members[tr])
        val.append(members[va])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(train), cat(val)
