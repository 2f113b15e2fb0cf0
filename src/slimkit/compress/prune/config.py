"""PruneConfig: one validated, versioned description of a pruning job (JSON round-trip)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from slimkit.errors import BadInputError

__all__ = ["PruneConfig", "Target", "parse_target", "ALLOCATIONS", "TARGET_KINDS", "SCHEDULES", "CONFIG_VERSION"]

CONFIG_VERSION = 1
TARGET_KINDS = ("macs", "params", "latency")
ALLOCATIONS = ("uniform", "global", "adaptive", "latency-table")
UNSTRUCTURED_SCOPES = ("global", "layer", "lamp")
# oneshot: prune, then train; iterative: prune -> train in `steps` stages; lapp: learnable thresholds pruned while
# training (Zhai et al.); precrop: crop an untrained model with SynFlow layer ratios (Cai et al.), then train.
SCHEDULES = ("oneshot", "iterative", "lapp", "precrop")
_TARGET = re.compile(r"^\s*(?P<kind>[a-z_]+)\s*=\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(?P<pct>%?)\s*$")


@dataclass(frozen=True)
class Target:
    """A budget as a fraction of the original model: kind in macs | params | latency."""

    kind: str
    ratio: float

    def __str__(self) -> str:
        from slimkit.compress.budget import exact_number

        return f"{self.kind}={exact_number(self.ratio)}"  # reads back as the same target


def parse_target(text: str | Target | None) -> Target | None:
    """Parse 'macs=0.5' (or 'macs=50%') into a Target; one-line BadInputError on anything else."""
    if text is None or isinstance(text, Target):
        return text
    match = _TARGET.match(str(text))
    if not match:
        raise BadInputError(f"malformed target {text!r}: expected KIND=FRACTION, e.g. macs=0.5 (KIND: {', '.join(TARGET_KINDS)})")
    kind, ratio = match["kind"], float(match["value"]) / (100.0 if match["pct"] else 1.0)
    if kind not in TARGET_KINDS:
        raise BadInputError(f"unknown target kind {kind!r}; choose from {', '.join(TARGET_KINDS)}")
    if not 0.0 < ratio < 1.0:
        raise BadInputError(f"target {text!r} must be a fraction of the original strictly between 0 and 1")
    return Target(kind, ratio)


@dataclass
class PruneConfig:
    """How to prune: budget, criterion, allocation, rounding; validated on construction."""

    target: str | None = "macs=0.5"  # KIND=FRACTION of the original; None with `ratio` = fixed channel ratio
    ratio: float | None = None  # fraction of prunable channels removed (used when target is None)
    criterion: str = "l2"
    allocation: str = "global"  # uniform | global | adaptive (cost-aware global ranking) | latency-table
    latency_table: str | None = None  # latency-table: the model's per-layer table (read if it exists, else timed, saved)
    round_to: int | None = 8  # channel multiple; None = choose by measurement for latency targets, else 1
    tolerance: float = 0.1  # accepted relative miss of the target (0.1 = +-10%)
    # no group loses more than this fraction (a layer is never removed); None: 0.9, or 0.75 for latency-table, whose
    # greedy path otherwise cuts whole streams to 10% (benchmarks/prune_bench.py: the 25% floor kept more accuracy
    # and reached speedup / MACs reduction >= 0.9 on ResNet-18 and MobileNetV2 at 2x and 4x)
    max_layer_prune: float | None = None
    ignore: list[str] = field(default_factory=list)  # module-name prefixes left unpruned
    calib_batches: int = 4  # batches of data for data-driven criteria (taylor, lrp)
    latency_threads: int = 1  # ONNX Runtime intra-op threads for latency targets
    closest: bool = False  # a latency target out of reach keeps the closest cut (noted) instead of failing
    unstructured: float | None = None  # extra weight sparsity after structured pruning (0..1)
    unstructured_scope: str = "global"  # global | layer | lamp
    schedule: str = "oneshot"  # oneshot | iterative | lapp | precrop (see SCHEDULES)
    steps: int = 3  # iterative: number of prune -> train stages
    epochs: float = 0.0  # training in all (needs data): after pruning, split over the stages, or during LAPP
    lr: float = 0.01  # SGD (momentum 0.9, cosine) learning rate of that training
    batch_size: int = 64
    kd: bool = False  # distil from the unpruned model while training
    seed: int = 0
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        from slimkit.compress.prune.criteria import CRITERIA

        self._check_types()
        if self.target is not None:
            self.target = str(parse_target(self.target))
        elif self.ratio is None:
            raise BadInputError("give a target (e.g. macs=0.5) or a channel ratio")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise BadInputError(f"ratio must be in [0, 1), got {self.ratio}")
        self.criterion = CRITERIA.canonical(self.criterion)
        _choice("allocation", self.allocation, ALLOCATIONS)
        self._check_latency_table()
        if self.max_layer_prune is None:
            self.max_layer_prune = 0.75 if self.allocation == "latency-table" else 0.9
        _choice("unstructured_scope", self.unstructured_scope, UNSTRUCTURED_SCOPES)
        if self.round_to is not None and not 1 <= int(self.round_to) <= 256:
            raise BadInputError(f"round_to must be in 1..256, got {self.round_to}")
        if not 0.0 < self.tolerance < 1.0:
            raise BadInputError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if not 0.0 < self.max_layer_prune < 1.0:
            raise BadInputError(f"max_layer_prune must be in (0, 1), got {self.max_layer_prune}")
        if self.unstructured is not None and not 0.0 < self.unstructured < 1.0:
            raise BadInputError(f"unstructured sparsity must be in (0, 1), got {self.unstructured}")
        if self.calib_batches < 1 or self.latency_threads < 1:
            raise BadInputError("calib_batches and latency_threads must be >= 1")
        self._check_schedule()
        if self.version > CONFIG_VERSION:
            raise BadInputError(f"prune config version {self.version} is newer than this slimkit ({CONFIG_VERSION})")

    def _check_latency_table(self) -> None:
        if self.latency_table is not None and self.allocation != "latency-table":
            raise BadInputError(f"latency_table is read by allocation latency-table only, not {self.allocation!r}")
        if self.allocation == "latency-table" and self.schedule != "oneshot":
            raise BadInputError(f"allocation latency-table times the model as given: use schedule oneshot, "
                                f"not {self.schedule!r}")

    def _check_schedule(self) -> None:
        _choice("schedule", self.schedule, SCHEDULES)
        if self.steps < 1 or self.batch_size < 1:
            raise BadInputError("steps and batch_size must be >= 1")
        if self.epochs < 0 or self.lr <= 0:
            raise BadInputError(f"epochs must be >= 0 and lr > 0, got {self.epochs} and {self.lr}")
        kind = self.parsed_target.kind if self.target is not None else None
        if self.schedule in ("iterative", "lapp") and self.epochs <= 0:
            raise BadInputError(f"schedule {self.schedule} trains while pruning: give epochs > 0 (and data)")
        if self.schedule == "lapp" and kind != "macs":
            raise BadInputError("schedule lapp prunes toward a MACs target: give target macs=F")
        if self.schedule == "iterative" and kind not in ("macs", "params"):
            raise BadInputError("schedule iterative takes a macs= or params= target")
        if self.schedule == "precrop" and kind == "latency":
            raise BadInputError("schedule precrop takes a macs= or params= target (or a ratio), not latency")
        if self.kd and self.epochs <= 0:
            raise BadInputError("kd distils while training: give epochs > 0")

    def _check_types(self) -> None:
        """A config file with a wrong-typed value gets a one-line error, not a TypeError deep inside."""
        def wrong(name: str, what: str) -> BadInputError:
            return BadInputError(f"prune config: {name} must be {what}, got {getattr(self, name)!r}")

        for name in ("round_to", "calib_batches", "latency_threads", "seed", "version", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
            elif not (value is None and name == "round_to") and (isinstance(value, bool) or not isinstance(value, int)):
                raise wrong(name, "an integer")
        for name in ("ratio", "tolerance", "max_layer_prune", "unstructured", "epochs", "lr"):
            value = getattr(self, name)
            optional = name in ("ratio", "unstructured", "max_layer_prune")
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                                     or not math.isfinite(value)):
                raise wrong(name, "a finite number")
        for name in ("target", "criterion", "allocation", "unstructured_scope", "schedule", "latency_table"):
            value = getattr(self, name)
            optional = name in ("target", "latency_table")
            if not isinstance(value, (str, Target) if name == "target" else str) and not (value is None and optional):
                raise wrong(name, "a string")
        if not isinstance(self.ignore, (list, tuple)) or not all(isinstance(v, str) for v in self.ignore):
            raise wrong("ignore", "a list of module-name prefixes")

    @property
    def parsed_target(self) -> Target | None:
        return parse_target(self.target)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneConfig":
        if not isinstance(data, dict):
            raise BadInputError("a prune config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown prune config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "PruneConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"prune config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
