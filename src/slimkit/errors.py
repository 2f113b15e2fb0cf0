"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

__all__ = ["SlimkitError", "UnknownModelError", "BadInputError", "DataError", "UnsafeFileError"]


class SlimkitError(Exception):
    """A problem with the user's input, reported without a traceback (exit code 2)."""

    exit_code = 2


class UnknownModelError(SlimkitError):
    """The model name resolves to nothing in timm, torchvision or on disk."""


class BadInputError(SlimkitError):
    """A malformed argument: input size, budget, recipe, or a model that fails at that size."""


class DataError(SlimkitError):
    """A dataset path that is missing, unreadable, malformed or empty."""


class UnsafeFileError(SlimkitError):
    """A file that could only be read by executing code from it (full unpickling)."""
