"""The data-source registry and the in-memory image dataset every source returns.

Images stay in memory as uint8 at their native resolution (N, C, H, W); resizing
to the model's input size, channel matching and normalisation happen per batch,
so a 60k-image dataset costs 47 MB rather than gigabytes of float tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from slimkit.errors import DataError
from slimkit.utils.registry import Registry

__all__ = ["DataBundle", "ImageTensorDataset", "SOURCES", "register_source", "load_data", "list_sources", "split_indices"]

# Sources live in their own modules; importing one registers it.
_SOURCE_MODULES = {
    "digits": "slimkit.data.digits",
    "synthetic": "slimkit.data.synthetic",
    "fashion-mnist": "slimkit.data.idx",
    "imagefolder": "slimkit.data.imagefolder",
    "cifar10": "slimkit.data.cifar",
    "hf": "slimkit.data.hf",
}
DEFAULT_MEAN = (0.5,)
DEFAULT_STD = (0.5,)


SOURCES: Registry = Registry("data source", modules=_SOURCE_MODULES, error=DataError)


def register_source(name: str) -> Callable:
    """Register `fn(path, *, seed, **kw) -> (train_x, train_y, val_x, val_y, class_names)`."""
    return SOURCES.register(name)


def list_sources() -> list[str]:
    return SOURCES.names()


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) resized, channel-matched and normalised on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, input_size, mean=DEFAULT_MEAN, std=DEFAULT_STD):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        self.images, self.labels = images, labels.long()
        self.input_size = tuple(input_size)
        c = self.input_size[0]
        self.mean = torch.tensor(_per_channel(mean, c)).view(1, c, 1, 1)
        self.std = torch.tensor(_per_channel(std, c)).view(1, c, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float().div_(255.0)
        c, h, w = self.input_size
        if x.shape[1] != c:
            x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c != 1 else x.mean(1, keepdim=True)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.transform(self.images[idx])
        return list(zip(x, self.labels[idx]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (inputs, labels); for small sets and calibration."""
        return self.transform(self.images), self.labels


def _per_channel(values, channels: int) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return [float(v) for v in values]
    return [float(np.mean(values))] * channels


@dataclass
class DataBundle:
    name: str
    train: ImageTensorDataset
    val: ImageTensorDataset
    class_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded train/val split of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None or limit >= len(y):
        return x, y
    if limit <= 0:
        raise DataError(f"sample count must be positive, got {limit}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[keep], y[keep]


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, path = str(spec).partition(":")
    return name.strip().lower(), (path or None)


def load_data(
    spec: str = "digits",
    input_size=(3, 32, 32),
    *,
    train_samples: int | None = None,
    val_samples: int | None = None,
    seed: int = 0,
    mean=DEFAULT_MEAN,
    std=DEFAULT_STD,
) -> DataBundle:
    """Load a data source by spec (`name[:PATH]`) as train/val splits at `input_size`."""
    name, path = parse_spec(spec)
    source = SOURCES.get(name)
    name = SOURCES.canonical(name)
    tx, ty, vx, vy, classes = source(path, seed=seed, input_size=tuple(input_size))
    if len(ty) == 0 or len(vy) == 0:
        raise DataError(f"data source {spec!r} is empty (train {len(ty)}, val {len(vy)} images)")
    tx, ty = _subset(tx, ty, train_samples, seed)
    vx, vy = _subset(vx, vy, val_samples, seed + 1)
    make = lambda x, y: ImageTensorDataset(x, y, input_size, mean, std)  # noqa: E731
    return DataBundle(name, make(tx, ty), make(vx, vy), list(classes), tuple(input_size), tuple(mean), tuple(std))
