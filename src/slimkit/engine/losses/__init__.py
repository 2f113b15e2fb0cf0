"""Training losses for engine.fit, one per module, in the loss registry: `make_loss("bias", model, example)`.

"ce" is fit's default cross-entropy (with the config's label smoothing); a registered loss is a
factory `(model, example_inputs, **options) -> loss module` called once before training.
"""

from __future__ import annotations

from typing import Any

from slimkit.utils.registry import Registry

__all__ = ["LOSSES", "make_loss"]

LOSSES: Registry = Registry("training loss", modules={"bias": "slimkit.engine.losses.bias_loss"})
LOSSES.add("ce", None)  # None: fit's own cross-entropy


def make_loss(name: str, model: Any, example_inputs: Any, **options: Any) -> Any:
    """The loss module registered as `name` for `model` (None for plain cross-entropy)."""
    factory = LOSSES.get(name)
    return None if factory is None else factory(model, example_inputs, **options)
