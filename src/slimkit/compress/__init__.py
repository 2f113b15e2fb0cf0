"""Compression: prune, distill, quantize, and the recipe pipeline that chains them toward a budget.

`slimkit.compress` is also the compress verb: `slimkit.compress(model, recipe, budget, out_dir=...)`
calls slimkit.compress.pipeline.compress, whether `slimkit.compress` resolves to this package
(once any submodule is imported) or to the function.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from slimkit.compress.pipeline import compress

        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
