"""Random images and labels, for profiling and tests (`synthetic[:N]`)."""

from __future__ import annotations

import torch

from slimkit.errors import DataError
from slimkit.data.base import register_source

NUM_CLASSES = 10


@register_source("synthetic")
def load_synthetic(path: str | None, *, seed: int = 0, input_size=(3, 32, 32)):
    try:
        n = int(path) if path else 256
    except ValueError as exc:
        raise DataError(f"synthetic:N needs an integer N, got {path!r}") from exc
    gen = torch.Generator().manual_seed(seed)
    c, h, w = input_size
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    n_val = max(1, n // 5)
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val], [str(i) for i in range(NUM_CLASSES)]
