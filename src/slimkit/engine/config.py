"""TrainConfig: every knob of a training run, validated, versioned, round-tripping JSON and YAML."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError

__all__ = ["TrainConfig", "CONFIG_VERSION"]

CONFIG_VERSION = 1
_OPTIMIZERS = ("adamw", "sgd")
_SCHEDULES = ("cosine", "constant")
_DEVICES = ("auto", "cpu", "cuda")
# Fields that do not change the trained weights: a resumed run may differ in these.
RUNTIME_FIELDS = ("num_workers", "eval_batch_size", "device")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (batch_size is the global batch across all processes)."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (fractional epochs); the LR schedule ends there
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    schedule: str = "cosine"
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    bf16: bool = False
    sync_bn: bool = False  # data-parallel: BatchNorm statistics over the global batch, not each rank's slice
    num_workers: int = 0
    drop_last: bool = False
    eval_batch_size: int = 256
    device: str = "auto"
    # Early stopping on val top-1 (epochs is then a cap): stop after `patience` epochs without a gain above
    # min_delta, or once val top-1 reaches target_accuracy (a fraction); keep_best restores the best epoch's weights.
    patience: int | None = None
    min_delta: float = 0.0
    target_accuracy: float | None = None
    keep_best: bool = False
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self._coerce_types()
        self._check_ranges()

    def _coerce_types(self) -> None:
        for name, kind in (("epochs", int), ("batch_size", int), ("seed", int), ("num_workers", int),
                           ("eval_batch_size", int), ("version", int)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise BadInputError(f"train config: {name} must be an integer, got {value!r}")
            setattr(self, name, kind(value))
        for name in ("lr", "weight_decay", "momentum", "warmup_epochs", "min_lr", "label_smoothing"):
            setattr(self, name, _as_float(name, getattr(self, name)))
        for name in ("grad_clip", "target_accuracy"):
            if getattr(self, name) is not None:
                setattr(self, name, _as_float(name, getattr(self, name)))
        self.min_delta = _as_float("min_delta", self.min_delta)
        if self.patience is not None:
            if isinstance(self.patience, bool) or not float(self.patience).is_integer():
                raise BadInputError(f"train config: patience must be an integer, got {self.patience!r}")
            self.patience = int(self.patience)
        if self.max_steps is not None:
            if isinstance(self.max_steps, bool) or not float(self.max_steps).is_integer():
                raise BadInputError(f"train config: max_steps must be an integer, got {self.max_steps!r}")
            self.max_steps = int(self.max_steps)
        for name in ("bf16", "drop_last", "sync_bn", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"train config: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("optimizer", "schedule", "device"):
            setattr(self, name, str(getattr(self, name)).lower())

    def _check_ranges(self) -> None:
        checks = [
            (self.version <= CONFIG_VERSION, f"version {self.version} is newer than this slimkit ({CONFIG_VERSION})"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.optimizer in _OPTIMIZERS,
             f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in _SCHEDULES, f"schedule must be one of {', '.join(_SCHEDULES)}, got {self.schedule!r}"),
            (self.device in _DEVICES or self.device.startswith("cuda:"),
             f"device must be auto, cpu or cuda[:N], got {self.device!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (0 <= self.warmup_epochs <= self.epochs, f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}"),
            (0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (0 <= self.min_delta < 1, f"min_delta must be in [0, 1), got {self.min_delta}"),
            (self.target_accuracy is None or 0 < self.target_accuracy <= 1,
             f"target_accuracy must be a fraction in (0, 1], got {self.target_accuracy}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(f"train config: {message}")

    # --- round trips -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build a config from a mapping; unknown keys are an error (typos must not pass silently)."""
        if not isinstance(data, dict):
            raise BadInputError(f"train config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"train config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A new config with `changes` applied (None values are ignored, as from unset CLI flags)."""
        data = self.to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return type(self).from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"train config is not valid JSON: {exc}") from exc

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "TrainConfig":
        import yaml

        try:
            return cls.from_dict(yaml.safe_load(text) or {})
        except yaml.YAMLError as exc:
            raise BadInputError(f"train config is not valid YAML: {str(exc).splitlines()[0]}") from exc

    def save(self, path: str | Path) -> Path:
        from slimkit.utils.io import atomic_write_text

        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BadInputError(f"cannot read train config {path}: {exc.strerror or exc}") from exc
        return cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Names of the fields that change training results and differ between the two configs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RUNTIME_FIELDS and mine[k] != theirs[k]]


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInputError(f"train config: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise BadInputError(f"train config: {name} must be finite, got {value}")
    return value
