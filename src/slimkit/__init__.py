"""slimkit: get a vision model under a budget with the least accuracy lost, and report the truth.

One verb per technique: `prune_(model, PruneConfig)`, `distill(student, teachers, DistillConfig, data=...)`,
`quantize(model, PTQConfig | QATConfig | CodebookConfig) -> QuantizedModel`, and
`compress(model, recipe, budget, out_dir=...)` chaining them toward a budget.

The top-level names are imported lazily so `import slimkit` stays fast; torch,
timm, onnxruntime and matplotlib load only when a function that needs them runs.
"""

from __future__ import annotations

import importlib
from typing import Any

from slimkit._version import __version__

# public name -> module that defines it
_LAZY = {
    "profile": "slimkit.profile",
    "Profile": "slimkit.profile",
    "load_model": "slimkit.models",
    "save_model_dir": "slimkit.models",
    "load_model_dir": "slimkit.models",
    "ModelInfo": "slimkit.models",
    "load_data": "slimkit.data",
    "SlimkitError": "slimkit.errors",
    "fit": "slimkit.engine",
    "evaluate": "slimkit.engine",
    "TrainConfig": "slimkit.engine",
    # one verb per technique, each with its config
    "prune_": "slimkit.compress.prune",
    "PruneConfig": "slimkit.compress.prune",
    "distill": "slimkit.compress.distill",
    "DistillConfig": "slimkit.compress.distill",
    "quantize": "slimkit.compress.quantize",
    "QuantizedModel": "slimkit.compress.quantize",
    "PTQConfig": "slimkit.compress.quantize",
    "QATConfig": "slimkit.compress.quantize",
    "CodebookConfig": "slimkit.compress.quantize",
    "compress": "slimkit.compress.pipeline",
    "load_recipe": "slimkit.compress.recipe",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slimkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
