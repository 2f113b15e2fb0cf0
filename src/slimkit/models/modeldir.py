"""Model directories: `architecture.json` (exact module shapes) + `model.safetensors`.

A pruned model no longer matches the shapes its constructor builds, so a plain
`load_state_dict` fails. The architecture file records, for every module, its
class and simple attributes (channel counts, groups, num_heads, ...) and, for
every state tensor, its shape. Loading rebuilds the original model from its
source, then patches attributes, swaps modules whose class changed and resizes
tensors before loading the weights strictly. Non-persistent buffers (derived tensors such as
BlurPool2d's filter, not saved) are recorded by shape; one whose shape changed is rebuilt at the
new shape by its module's `init_non_persistent_buffers()` (timm's convention).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimkit.errors import BadInputError, UnsafeFileError
from slimkit.models.resolve import ModelInfo
from slimkit.utils.io import atomic_dir, atomic_write_json
from slimkit.utils.registry import Registry

__all__ = ["save_model_dir", "load_model_dir", "is_model_dir", "describe_architecture", "rebuild_model",
           "DERIVED_SOURCES", "ARCH_FILE", "WEIGHTS_FILE"]

ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
# Classes are re-created by qualified name only from these packages: never from user code.
_TRUSTED_PREFIXES = ("torch.nn.", "torchvision.", "timm.", "slimkit.")
_SIMPLE = (int, float, bool, str, type(None))
# Models derived from another one by code (e.g. the halves of a split): source name -> rebuild(info, trust_code),
# which builds the derived model of a fresh parent; the shapes and weights are then patched and loaded as usual.
DERIVED_SOURCES: Registry = Registry("model source", modules={"split-part": "slimkit.deploy.edge.split_dir"})


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / ARCH_FILE).is_file()


def _simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, (tuple, list)):
        return all(_simple(v) for v in value)
    return False


def _attrs(module: nn.Module) -> dict[str, Any]:
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in vars(module).items()
        if not k.startswith("_") and k != "training" and _simple(v)
    }


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_architecture(model: nn.Module) -> dict[str, Any]:
    """The shape description of `model`: module classes, simple attributes, tensor shapes."""
    modules = {name: {"type": _qualname(m), "attrs": _attrs(m)} for name, m in model.named_modules()}
    persistent = model.state_dict(keep_vars=True)
    tensors = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "param": isinstance(t, nn.Parameter)}
        for name, t in persistent.items()
    }
    buffers = {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
               for name, t in _non_persistent_buffers(model).items()}
    return {"modules": modules, "tensors": tensors, "buffers": buffers}


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    found = {}
    for prefix, m in model.named_modules():
        for name in m._non_persistent_buffers_set:
            if m._buffers.get(name) is not None:
                found[f"{prefix}.{name}" if prefix else name] = m._buffers[name]
    return found


def save_model_dir(model: nn.Module, info: ModelInfo, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (unchanged) to a new model directory at `path`, atomically."""
    from safetensors.torch import save_model

    arch = {"format": "slimkit-model", "version": FORMAT_VERSION, "model": info.to_dict(), **describe_architecture(model)}
    if extra:
        arch["extra"] = extra
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / WEIGHTS_FILE))
        atomic_write_json(tmp / ARCH_FILE, arch)
    return Path(path)


def _import_class(qualname: str) -> type:
    if not qualname.startswith(_TRUSTED_PREFIXES):
        raise UnsafeFileError(f"architecture names class {qualname!r} outside torch/torchvision/timm/slimkit")
    module_name, _, cls_name = qualname.rpartition(".")
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
            break
        except ModuleNotFoundError:
            module_name, _, outer = module_name.rpartition(".")
            cls_name = f"{outer}.{cls_name}"
    for part in cls_name.split("."):
        obj = getattr(obj, part)
    return obj


def _blank_module(qualname: str, attrs: dict[str, Any]) -> nn.Module:
    """Make a module of class `qualname` without running its constructor; tensors come later."""
    cls = _import_class(qualname)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in attrs.items():
        setattr(module, key, tuple(value) if isinstance(value, list) else value)
    return module


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _patch_modules(model: nn.Module, modules: dict[str, dict[str, Any]]) -> nn.Module:
    for name in sorted(modules, key=lambda n: (n.count(".") if n else -1)):
        record = modules[name]
        try:
            current = model.get_submodule(name) if name else model
        except AttributeError:
            current = None
        if current is None or _qualname(current) != record["type"]:
            if not name:
                raise BadInputError(f"root module is {_qualname(model)}, architecture says {record['type']}")
            _set_submodule(model, name, _blank_module(record["type"], record["attrs"]))
            continue
        for key, value in record["attrs"].items():
            old = getattr(current, key, None)
            new = tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value
            if old != new:
                setattr(current, key, new)
    return model


def _patch_tensors(model: nn.Module, tensors: dict[str, dict[str, Any]]) -> None:
    current = model.state_dict(keep_vars=True)
    for name in set(current) - set(tensors):
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if attr in owner._parameters:
            owner._parameters[attr] = None
        else:
            owner._buffers[attr] = None
    for name, rec in tensors.items():
        old = current.get(name)
        shape = torch.Size(rec["shape"])
        if old is not None and old.shape == shape:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        blank = torch.empty(shape, dtype=getattr(torch, rec["dtype"]))
        if rec["param"]:
            owner._parameters[attr] = nn.Parameter(blank, requires_grad=blank.is_floating_point())
        else:
            owner._buffers[attr] = blank


def _rebuild_buffers(model: nn.Module, buffers: dict[str, dict[str, Any]]) -> None:
    """Give each non-persistent buffer whose shape changed its recorded shape, then let its module
    recompute the values (they are derived, so not saved)."""
    current = _non_persistent_buffers(model)
    owners: dict[str, nn.Module] = {}
    for name, rec in buffers.items():
        old = current.get(name)
        if old is not None and list(old.shape) == rec["shape"]:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner._buffers[attr] = torch.empty(rec["shape"], dtype=getattr(torch, rec["dtype"]))
        owners[owner_name] = owner
    for owner_name, owner in owners.items():
        init = getattr(owner, "init_non_persistent_buffers", None)
        if not callable(init):
            raise BadInputError(f"cannot rebuild the changed non-persistent buffers of {owner_name or 'the model'} "
                                f"({type(owner).__name__} has no init_non_persistent_buffers)")
        init()


def _load_weights(model: nn.Module, weights: Path) -> None:
    """Load safetensors weights strictly, keeping the state-dict version metadata modules check.

    Some modules (torchvision's MNASNet) refuse a state dict without `_metadata`, which
    safetensors cannot store; the freshly built model's own metadata is the right one.
    Tied tensors are saved once, so a missing key is fine when it shares storage with a loaded one.
    """
    from collections import OrderedDict

    from safetensors.torch import load_file

    loaded = OrderedDict(load_file(str(weights)))
    loaded._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    if unexpected:
        raise RuntimeError(f"unexpected tensors: {', '.join(unexpected[:5])}")
    current = model.state_dict()
    loaded_ptrs = {current[k].data_ptr() for k in loaded if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise RuntimeError(f"missing tensors: {', '.join(untied[:5])}")


def read_architecture(path: str | Path) -> dict[str, Any]:
    arch_path = Path(path) / ARCH_FILE
    try:
        arch = json.loads(arch_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"cannot read {arch_path}: {exc}") from exc
    if arch.get("format") != "slimkit-model" or not isinstance(arch.get("version"), int):
        raise BadInputError(f"{arch_path} is not a slimkit architecture file")
    if arch["version"] > FORMAT_VERSION:
        raise BadInputError(f"{arch_path} has format version {arch['version']}; this slimkit reads up to {FORMAT_VERSION}")
    return arch


def rebuild_model(info: ModelInfo, trust_code: bool, path: str | Path = "") -> nn.Module:
    """A fresh model of the saved one's original architecture, built from its source (`path` names it in errors)."""
    from slimkit.models.resolve import load_model

    if info.source in DERIVED_SOURCES:
        return DERIVED_SOURCES.get(info.source)(info, trust_code)
    if info.source == "file":
        if not trust_code:
            raise UnsafeFileError(
                f"{path} was built by user code in {info.file_path}; load it with trust_code=True "
                "(CLI: name that file explicitly) to import it"
            )
        return load_model(f"{info.file_path}:{info.name}", **info.kwargs)[0]
    if info.source in ("timm", "torchvision"):
        return load_model(info.spec, **info.kwargs)[0]
    raise BadInputError(f"{path}: cannot rebuild a model of source {info.source!r}")


def load_model_dir(path: str | Path, trust_code: bool = False, base: nn.Module | None = None,
                   budget: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the exact model saved in directory `path`; returns a new model in eval mode.

    `base`: a model of the saved one's original architecture (changed in place and returned), for
    directories whose model was built in memory (source "module") and so cannot be rebuilt by name.
    `budget` (e.g. "macs=0.5"): for a directory of nested sub-models (SortedNet), the largest one within it."""
    from safetensors import SafetensorError

    path = Path(path)
    arch = read_architecture(path)
    info = ModelInfo.from_dict(arch["model"])
    if base is None:
        base = rebuild_model(info, trust_code, path)
    _patch_modules(base, arch["modules"])
    _patch_tensors(base, arch["tensors"])
    _rebuild_buffers(base, arch.get("buffers", {}))
    weights = path / WEIGHTS_FILE
    try:
        _load_weights(base, weights)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise BadInputError(f"cannot load weights {weights}: {exc}") from exc
    base.eval()
    return (base, info) if budget is None else _at_budget(base, info, budget, path)


def _at_budget(model: nn.Module, info: ModelInfo, budget: str, path: Path) -> tuple[nn.Module, ModelInfo]:
    """The sub-model a budget picks, for models that hold several (they offer `at_budget(budget)`)."""
    import dataclasses
    import logging

    pick = getattr(model, "at_budget", None)
    if pick is None:
        raise BadInputError(f"{path} holds one model; a budget needs nested sub-models (`slimkit search train --sorted`)")
    child, chosen = pick(budget)
    logging.getLogger(__name__).info("%s: budget %s chose level %d of %d", path, budget, chosen["level"],
                                     chosen["levels"])
    return child.eval(), dataclasses.replace(info, **chosen.get("info", {}))
