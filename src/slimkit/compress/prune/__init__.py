"""Structured and unstructured pruning that works on any model, reloads anywhere, and is measured.

Public API:
- `prune_(model, config, example_inputs, calib=None) -> PruneResult`: structured pruning in place.
- `PruneConfig`: the validated, versioned job description (JSON round-trip).
- `register_criterion`, `available_criteria`: the importance-criterion registry.
"""

from slimkit.compress.prune.api import PruneResult, prune_
from slimkit.compress.prune.config import PruneConfig, Target, parse_target
from slimkit.compress.prune.criteria import Calibration, available_criteria, register_criterion

__all__ = ["prune_", "PruneResult", "PruneConfig", "Target", "parse_target", "Calibration",
           "available_criteria", "register_criterion"]
