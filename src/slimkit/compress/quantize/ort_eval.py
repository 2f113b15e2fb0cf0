"""Running ONNX models in ONNX Runtime for quantization decisions: predictions, accuracy, quiet sessions."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["session", "predict", "accuracy", "quiet"]


def session(path: str | Path, threads: int = 1):
    from slimkit.deploy.onnx_export import ort_session

    return ort_session(path, threads=threads)


def predict(model: str | Path | object, x: np.ndarray, batch_size: int = 64, threads: int = 1) -> np.ndarray:
    """First output of the model for every row of `x`, batched."""
    sess = session(model, threads) if isinstance(model, (str, Path)) else model
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def accuracy(model: str | Path | object, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> float:
    """Top-1 accuracy in percent."""
    return float((predict(model, x, batch_size).argmax(axis=1) == y).mean() * 100.0)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence ONNX Runtime's quantization tools, which print progress and log warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
