"""Calibration and evaluation data for quantization, from any slimkit data source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

__all__ = ["QuantData", "TensorReader", "load_quant_data", "UNLABELLED_SOURCES"]

UNLABELLED_SOURCES = ("synthetic",)  # their labels are random: accuracy would mean nothing


class TensorReader(CalibrationDataReader):
    """An ONNX Runtime calibration reader over an in-memory (N, C, H, W) float32 array."""

    def __init__(self, x: np.ndarray, input_name: str = "input", batch_size: int = 16):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.input_name, self.batch_size = input_name, max(1, int(batch_size))
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.x):
            return None
        batch = self.x[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class QuantData:
    """Calibration images (from the train split) and labelled evaluation images (the val split)."""

    name: str
    calib_x: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray | None  # None: the source has no meaningful labels

    @property
    def labelled(self) -> bool:
        return self.val_y is not None


def load_quant_data(
    spec: str,
    input_size: Sequence[int],
    *,
    calib_samples: int = 256,
    val_samples: int | None = 1000,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    seed: int = 0,
) -> QuantData:
    """Calibrate on the train split and evaluate on the val split, so calibration never sees test images."""
    from slimkit.data import load_data
    from slimkit.data.base import parse_spec

    bundle = load_data(spec, tuple(input_size), train_samples=calib_samples, val_samples=val_samples, seed=seed,
                       mean=tuple(mean), std=tuple(std))
    calib_x, _ = bundle.train.tensors()
    val_x, val_y = bundle.val.tensors()
    labelled = parse_spec(spec)[0] not in UNLABELLED_SOURCES
    return QuantData(bundle.name, calib_x.numpy(), val_x.numpy(), val_y.numpy() if labelled else None)
