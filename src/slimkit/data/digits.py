"""The embedded default: scikit-learn's bundled handwritten digits (1,797 real 8x8 images)."""

from __future__ import annotations

import numpy as np
import torch

from slimkit.data.base import register_source, split_indices

VAL_FRACTION = 0.2
SPLIT_SEED = 1234  # fixed so every command and session sees the same split


@register_source("digits")
def load_digits_source(path: str | None, *, seed: int = 0, input_size=None):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; scale to the uint8 range the dataset class expects.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train, val = split_indices(len(labels), VAL_FRACTION, SPLIT_SEED)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    return x[train], y[train], x[val], y[val], [str(i) for i in range(10)]
