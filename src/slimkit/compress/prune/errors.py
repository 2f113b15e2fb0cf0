"""Internal failures of the pruner, turned into one named error instead of an escaping exception.

Pruning runs third-party graph tracing (Torch-Pruning) over arbitrary model code, so an
unexpected exception is always possible on a model nobody tried. `prune_` runs inside
`internal_errors(model)`: anything that is not already a user-level SlimkitError becomes a
PruneInternalError naming the operation (the innermost `operation(...)` block running) and the
model's submodule it was handling (the innermost traceback frame holding one), keeping the
original exception as its cause (shown with --debug).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

from slimkit.errors import SlimkitError

__all__ = ["PruneInternalError", "internal_errors", "operation"]

_OPERATION = "_slimkit_prune_operation"


class PruneInternalError(SlimkitError):
    """The pruner met something it could not handle (a bug or an unsupported construct): exit code 2."""

    def __init__(self, operation: str, module: str, cause: BaseException) -> None:
        detail = str(cause).strip().splitlines()
        self.operation, self.module, self.cause_type = operation, module, type(cause).__name__
        super().__init__(f"pruning could not handle module {module!r} while {operation}: "
                         f"{type(cause).__name__}: {detail[0] if detail else ''} (an internal error; --debug shows it)")


@contextlib.contextmanager
def operation(what: str) -> Iterator[None]:
    """Label the work inside (innermost label wins) for a PruneInternalError raised around it."""
    try:
        yield
    except SlimkitError:
        raise
    except Exception as exc:
        if not hasattr(exc, _OPERATION):
            setattr(exc, _OPERATION, what)
        raise


@contextlib.contextmanager
def internal_errors(model: nn.Module) -> Iterator[None]:
    """Re-raise any non-SlimkitError exception as a PruneInternalError about `model`."""
    try:
        yield
    except SlimkitError:
        raise
    except Exception as exc:
        what = getattr(exc, _OPERATION, "pruning")
        raise PruneInternalError(what, failing_module(model, exc), exc) from exc


def failing_module(model: nn.Module, exc: BaseException) -> str:
    """Dotted name of the module the innermost traceback frame was handling (a local variable holding
    it, or a Torch-Pruning graph node of it), in `model` or in a pruned copy another frame held;
    the model's class name when no frame held one."""
    held: list[nn.Module] = []  # outermost frame first
    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            held.extend(_modules_in(value))
        tb = tb.tb_next
    roots = [model] + [m for m in held if next(m.children(), None) is not None]
    tables = [{id(m): n for n, m in root.named_modules() if n} for root in dict.fromkeys(roots)]
    for candidate in reversed(held):
        for names in tables:
            if id(candidate) in names:
                return names[id(candidate)]
    return type(model).__name__


def _modules_in(value) -> list[nn.Module]:
    """The module a frame variable stands for: itself, a Torch-Pruning Node's (`.module`) or
    Dependency's (`.target.module`), or those in a tuple of arguments."""
    if isinstance(value, tuple):
        return [m for item in value[:8] if not isinstance(item, tuple) for m in _modules_in(item)]
    for candidate in (value, getattr(value, "module", None), getattr(getattr(value, "target", None), "module", None)):
        if isinstance(candidate, nn.Module):
            return [candidate]
    return []
