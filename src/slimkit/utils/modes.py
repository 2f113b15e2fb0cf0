"""Run a model in eval mode for a block and give it back in the mode it came in."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch `model` to eval mode (changed in place) and restore its training flag afterwards, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
