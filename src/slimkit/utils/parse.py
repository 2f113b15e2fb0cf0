"""Parsing of small CLI values (input sizes) with one-line errors."""

from __future__ import annotations

import re

from slimkit.errors import BadInputError

__all__ = ["parse_input_size"]

_SIZE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*$")


def parse_input_size(text: str | tuple[int, int, int] | list[int] | None) -> tuple[int, int, int] | None:
    """Parse 'CxHxW' (e.g. '3x32x32') into a tuple; None passes through."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        dims = tuple(int(v) for v in text)
        if len(dims) != 3:
            raise BadInputError(f"input size must have 3 dims (C, H, W), got {list(text)}")
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise BadInputError(f"malformed input size {text!r}: expected CxHxW, e.g. 3x224x224")
        dims = tuple(int(g) for g in match.groups())
    if any(d <= 0 for d in dims) or dims[0] > 64 or max(dims[1:]) > 8192:
        raise BadInputError(f"input size {dims} is out of range (C in 1..64, H and W in 1..8192)")
    return dims  # type: ignore[return-value]
