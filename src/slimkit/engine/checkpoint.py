"""Training-state checkpoints (one safetensors file, JSON in its header) and safe weight loading.

A checkpoint holds model, optimizer, scheduler, loss-module (distillation
adapters, DML peer) and RNG states, written with one atomic rename, so a SIGKILL
leaves either the previous checkpoint or the new one, never a torn file. Nothing
is unpickled: tensors go into safetensors, everything else into JSON metadata.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimkit.errors import BadInputError, UnsafeFileError
from slimkit.utils.io import atomic_write_bytes, to_jsonable

__all__ = ["CHECKPOINT_FILE", "save_checkpoint", "load_checkpoint", "read_checkpoint_config", "data_fingerprint",
           "restore_checkpoint", "load_state_file", "capture_rng", "restore_rng"]

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "slimkit-train-state"
VERSION = 1


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch (and CUDA) as tensors, Python and NumPy as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    np_state = np.random.get_state()
    meta = {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        state_meta[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value
                state_meta[str(idx)][key] = {"tensor": True}
            else:
                state_meta[str(idx)][key] = {"value": value}
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            key: tensors[f"optim/{idx}/{key}"] if rec.get("tensor") else rec["value"] for key, rec in entry.items()
        }
    groups = meta["param_groups"]
    for saved, current in zip(groups, optimizer.param_groups):
        for key, value in saved.items():  # JSON turned tuples (betas) into lists
            if isinstance(current.get(key), tuple) and isinstance(value, list):
                saved[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in sd.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: Any,
    meta: dict[str, Any],
    rng_states: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
) -> Path:
    """Write the whole training state to `path` atomically; `meta` is JSON (epoch, config, hooks ...).

    `rng_states` holds capture_rng() of every rank (default: this process only).
    """
    from safetensors.torch import save

    opt_tensors, opt_meta = _split_optimizer(optimizer)
    rng_states = rng_states or [capture_rng()]
    tensors = {**_prefixed("model", model.state_dict()), **opt_tensors}
    for rank, (rng_tensors, _) in enumerate(rng_states):
        tensors.update(_prefixed(f"rng/{rank}", rng_tensors))
    if isinstance(loss_fn, nn.Module):
        tensors.update(_prefixed("loss", loss_fn.state_dict()))
    # safetensors refuses shared or strided storage; a detached contiguous copy is cheap at this scale.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"format": FORMAT, "version": VERSION, **meta, "optimizer": opt_meta,
              "scheduler": scheduler.state_dict(), "rng": [m for _, m in rng_states]}
    data = save(tensors, metadata={"slimkit": json.dumps(to_jsonable(header))})
    return atomic_write_bytes(path, data)


def data_fingerprint(data: Any) -> dict[str, Any]:
    """Sizes and a sha256 of the training images and labels: a resumed run must see the same data."""
    import hashlib

    fingerprint: dict[str, Any] = {"num_train": len(data.train), "num_val": len(data.val)}
    images, labels = getattr(data.train, "images", None), getattr(data.train, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        digest = hashlib.sha256(images.contiguous().numpy().tobytes())
        digest.update(labels.contiguous().numpy().tobytes())
        fingerprint["train_sha256"] = digest.hexdigest()
    return fingerprint


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The TrainConfig dict a checkpoint was written with (reads only the header)."""
    return _read(path, with_tensors=False)[1]["config"]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint as (tensors, JSON header); a torn or foreign file is a BadInputError."""
    return _read(path, with_tensors=True)


def _read(path: str | Path, with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = json.loads((fh.metadata() or {})["slimkit"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if with_tensors else {}
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise BadInputError(f"checkpoint {path} is corrupt or not a slimkit checkpoint ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); move it away to start over") from exc
    if header.get("format") != FORMAT:
        raise BadInputError(f"{path} is not a slimkit training checkpoint")
    if header.get("version", 0) > VERSION:
        raise BadInputError(f"checkpoint {path} has version {header['version']}; this slimkit reads up to {VERSION}")
    return tensors, header


def restore_checkpoint(
    tensors: dict[str, torch.Tensor],
    header: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: Any,
    rank: int = 0,
) -> None:
    """Load a checkpoint into freshly built training objects (shapes must match the run that wrote it).

    Rank r takes RNG state r; with more ranks than were saved, rank r takes r modulo that count.
    """
    try:
        model.load_state_dict(_unprefixed("model", tensors), strict=True)
        if isinstance(loss_fn, nn.Module):
            loss_fn.load_state_dict(_unprefixed("loss", tensors), strict=True)
        _join_optimizer(tensors, header["optimizer"], optimizer)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise BadInputError(f"checkpoint does not match this model or loss: {str(exc).splitlines()[0]}") from exc
    scheduler.load_state_dict(header["scheduler"])
    source = rank % len(header["rng"])
    restore_rng(_unprefixed(f"rng/{source}", tensors), header["rng"][source])


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "documentation" not in ln]
    return lines[-1] if lines else type(exc).__name__


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file or a torch checkpoint, never executing pickled code.

    torch files are read with weights_only=True; one that needs full unpickling is
    refused with UnsafeFileError. A {"state_dict": ...} or {"model": ...} wrapper is unwrapped,
    and a slimkit checkpoint.safetensors yields its model weights.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
                is_checkpoint = FORMAT in (fh.metadata() or {}).get("slimkit", "")
        except (SafetensorError, OSError) as exc:
            raise BadInputError(f"cannot read weights {path}: {exc}") from exc
        # A training checkpoint's model weights can seed a new run (e.g. after a NaN, with a lower lr).
        return _unprefixed("model", tensors) if is_checkpoint else tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))
        if named or "global" in str(exc).lower():
            what = f" (it names {named.group(1)})" if named else ""
            raise UnsafeFileError(f"{path} needs full unpickling{what}, which could run code; refusing to load "
                                  "it. Re-save it as safetensors from a trusted environment") from exc
        raise BadInputError(f"cannot read weights {path}: the weights-only unpickler rejects it "
                            f"({_last_line(exc)}); nothing in it was run") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BadInputError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{path} does not hold a state dict of tensors")
    return obj
