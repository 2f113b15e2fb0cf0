"""Resolve a model spec (`timm:NAME`, `tv:NAME`, `NAME`, a model directory, `file.py:factory`)."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import re
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any

import torch.nn as nn

from slimkit.errors import BadInputError, UnknownModelError

__all__ = ["ModelInfo", "load_model", "available_model_names", "is_code_spec", "declared_input_size", "DEFAULT_MEAN",
           "DEFAULT_STD"]

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (3, 224, 224)
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<factory>[A-Za-z_]\w*)$")


def declared_input_size(model: object) -> tuple[int, int, int] | None:
    """The (C, H, W) a model states for itself: timm's pretrained_cfg, or an `input_size` attribute."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") or getattr(model, "input_size", None)
    return tuple(size) if size is not None else None


def is_code_spec(spec: object) -> bool:
    """True for `path/to/file.py:factory`: naming the file explicitly is what trusts its code."""
    return isinstance(spec, str) and _FILE_SPEC.match(spec) is not None


@dataclass
class ModelInfo:
    """Where a model came from and how to feed it (what a model directory records)."""

    source: str  # "timm" | "torchvision" | "file" | "dir" | "module"
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = DEFAULT_INPUT_SIZE
    mean: tuple[float, ...] = DEFAULT_MEAN
    std: tuple[float, ...] = DEFAULT_STD
    num_classes: int | None = None
    class_names: list[str] | None = None
    file_path: str | None = None  # for source == "file"

    @property
    def spec(self) -> str:
        if self.source == "timm":
            return f"timm:{self.name}"
        if self.source == "torchvision":
            return f"tv:{self.name}"
        if self.source == "file":
            return f"{self.file_path}:{self.name}"
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("input_size", "mean", "std"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)


def _timm_names() -> list[str]:
    import timm

    import slimkit.zoo  # noqa: F401  (registers slimkit's own architectures into timm)

    return timm.list_models()


def _tv_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models()


def available_model_names() -> dict[str, list[str]]:
    return {"timm": _timm_names(), "torchvision": _tv_names()}


def _closest(name: str, pool: list[str]) -> str:
    matches = difflib.get_close_matches(name, sorted(set(pool)), n=3, cutoff=0.6)
    return f"; closest: {', '.join(matches)}" if matches else ""


def _build_timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, OSError) as exc:
        if pretrained:
            raise BadInputError(f"pretrained weights for timm:{name} are not available locally ({exc})") from exc
        raise
    cfg = getattr(model, "pretrained_cfg", None) or {}
    info = ModelInfo(
        source="timm",
        name=name,
        kwargs=dict(kwargs),
        input_size=tuple(cfg.get("input_size", DEFAULT_INPUT_SIZE)),
        mean=tuple(cfg.get("mean", DEFAULT_MEAN)),
        std=tuple(cfg.get("std", DEFAULT_STD)),
        num_classes=getattr(model, "num_classes", None),
    )
    return model, info


def _tv_metadata(name: str) -> tuple[tuple[int, int, int], tuple, tuple]:
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
        transform = weights.transforms()
        crop = transform.crop_size[0]
        return (3, crop, crop), tuple(transform.mean), tuple(transform.std)
    except Exception:  # no weights enum, or a non-classification transform
        return DEFAULT_INPUT_SIZE, DEFAULT_MEAN, DEFAULT_STD


def _build_tv(name: str, pretrained: bool, kwargs: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    import torchvision.models as tvm

    weights = "DEFAULT" if pretrained else None
    try:
        model = tvm.get_model(name, weights=weights, **kwargs)
    except (RuntimeError, OSError) as exc:
        if pretrained:
            raise BadInputError(f"pretrained weights for tv:{name} are not available locally ({exc})") from exc
        raise
    size, mean, std = _tv_metadata(name)
    num_classes = kwargs.get("num_classes")
    if num_classes is None:
        head = [m for m in model.modules() if isinstance(m, nn.Linear)]
        num_classes = head[-1].out_features if head else None
    info = ModelInfo("torchvision", name, dict(kwargs), size, mean, std, num_classes)
    return model, info


def _build_file(path: str, factory: str, kwargs: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise UnknownModelError(f"model file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"slimkit_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the user named this file explicitly
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UnknownModelError(f"{file} has no callable {factory!r}")
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    call_kwargs = {k: v for k, v in kwargs.items() if accepts_any or k in params}
    model = fn(**call_kwargs)
    if not isinstance(model, nn.Module):
        raise BadInputError(f"{file}:{factory} returned {type(model).__name__}, not a torch.nn.Module")
    size = tuple(getattr(model, "input_size", None) or getattr(fn, "input_size", None) or DEFAULT_INPUT_SIZE)
    info = ModelInfo("file", factory, call_kwargs, size, file_path=str(file), num_classes=kwargs.get("num_classes"))
    return model, info


def _model_kwargs(num_classes: int | None, in_chans: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(extra)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None and in_chans != 3:
        kwargs["in_chans"] = in_chans
    return kwargs


def load_model(
    spec: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    trust_code: bool = False,
    budget: str | None = None,
    **extra: Any,
) -> tuple[nn.Module, ModelInfo]:
    """Build a new model from `spec`; returns (model in eval mode, ModelInfo).

    `budget` (or a spec `DIR@BUDGET`, e.g. `run@macs=0.5`): from a model directory of nested sub-models
    (SortedNet), the largest sub-model within the budget."""
    from slimkit.models.modeldir import is_model_dir, load_model_dir

    spec = str(spec).strip()
    if not spec:
        raise UnknownModelError("empty model name")
    kwargs = _model_kwargs(num_classes, in_chans, extra)
    if not is_model_dir(spec) and "@" in spec and is_model_dir(spec.rsplit("@", 1)[0]):
        spec, budget = spec.rsplit("@", 1)
    if is_model_dir(spec):
        return load_model_dir(spec, trust_code=trust_code, budget=budget)
    if budget is not None:
        raise BadInputError(f"a budget ({budget}) chooses among the nested sub-models of a model directory; "
                            f"{spec} is not one")
    match = _FILE_SPEC.match(spec)
    if match:
        model, info = _build_file(match["path"], match["factory"], kwargs)
    elif spec.startswith("timm:"):
        name = spec[5:]
        if name not in _timm_names():
            raise UnknownModelError(f"unknown timm model {name!r}{_closest(name, _timm_names())}")
        model, info = _build_timm(name, pretrained, kwargs)
    elif spec.startswith(("tv:", "torchvision:")):
        name = spec.split(":", 1)[1]
        if name not in _tv_names():
            raise UnknownModelError(f"unknown torchvision model {name!r}{_closest(name, _tv_names())}")
        kwargs.pop("in_chans", None)
        model, info = _build_tv(name, pretrained, kwargs)
    else:
        model, info = _build_bare(spec, pretrained, kwargs)
    model.eval()
    return model, info


def _build_bare(name: str, pretrained: bool, kwargs: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    if Path(name).exists():
        raise UnknownModelError(f"{name} is not a slimkit model directory (no architecture.json)")
    if name in _timm_names():
        log.info("model %r resolved to timm:%s", name, name)
        return _build_timm(name, pretrained, kwargs)
    if name in _tv_names():
        log.info("model %r resolved to tv:%s", name, name)
        kwargs.pop("in_chans", None)
        return _build_tv(name, pretrained, kwargs)
    pool = _timm_names() + _tv_names()
    raise UnknownModelError(f"unknown model {name!r} (not in timm or torchvision){_closest(name, pool)}")
