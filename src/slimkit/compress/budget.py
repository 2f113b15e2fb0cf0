"""Budgets: `macs=0.5`, `params=0.5`, `size=0.25`, `latency=0.25` (fractions) or `latency=4ms` (absolute)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from slimkit.errors import BadInputError

__all__ = ["Budget", "parse_budget", "BUDGET_KINDS"]

BUDGET_KINDS = ("macs", "params", "size", "latency")
_BUDGET = re.compile(r"^\s*(?P<kind>[a-z]+)\s*=\s*(?P<value>[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(?P<unit>ms|%)?\s*$")


@dataclass(frozen=True)
class Budget:
    """A cost ceiling: `fraction` of the baseline's figure, or an absolute latency in ms."""

    kind: str
    fraction: float | None = None
    absolute_ms: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}={exact_number(self.absolute_ms)}ms" if self.absolute_ms is not None else f"{self.kind}={exact_number(self.fraction)}"

    def limit(self, baseline_value: float) -> float:
        """The ceiling in the figure's own unit, given the baseline's figure."""
        return self.absolute_ms if self.absolute_ms is not None else self.fraction * baseline_value

    def met(self, baseline_value: float, value: float) -> bool:
        return value <= self.limit(baseline_value)

    def fraction_of(self, baseline_value: float) -> float:
        """The budget as a fraction of the baseline (absolute latencies converted)."""
        return self.limit(baseline_value) / baseline_value


def exact_number(value: float) -> str:
    """Short form when it reads back as the same number (0.25, 4), else the exact repr: str(budget) re-parses."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def parse_budget(text: str) -> Budget:
    match = _BUDGET.match(str(text).lower())
    if not match:
        raise BadInputError(f"malformed budget {text!r}: expected KIND=FRACTION (e.g. latency=0.25) or latency=4ms")
    kind, value, unit = match["kind"], float(match["value"]), match["unit"]
    if not math.isfinite(value):
        raise BadInputError(f"budget {text!r} is not a finite number")
    if kind not in BUDGET_KINDS:
        raise BadInputError(f"unknown budget kind {kind!r}; choose from {', '.join(BUDGET_KINDS)}")
    if unit == "ms":
        if kind != "latency":
            raise BadInputError(f"only latency budgets take milliseconds, got {text!r}")
        if value <= 0:
            raise BadInputError(f"latency budget must be positive, got {text!r}")
        return Budget(kind, absolute_ms=value)
    fraction = value / 100.0 if unit == "%" else value
    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"budget {text!r} must be a fraction of the baseline strictly between 0 and 1")
    return Budget(kind, fraction=fraction)
