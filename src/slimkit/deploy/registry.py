"""The exporter registry: one decorator per plug-in kind (`@register_exporter("onnx")`)."""

from __future__ import annotations

import importlib
from typing import Callable

from slimkit.errors import BadInputError

__all__ = ["register_exporter", "get_exporter", "list_exporters"]

_EXPORTERS: dict[str, Callable] = {}
# Built-in exporters live in their own modules; importing one registers it.
_BUILTIN = {
    "onnx": "slimkit.deploy.onnx_export",
    "openvino": "slimkit.deploy.openvino_export",
    "tflite": "slimkit.deploy.tflite_export",
    "executorch": "slimkit.deploy.executorch_export",
}


def register_exporter(name: str) -> Callable[[Callable], Callable]:
    """Register `fn(model, input_size, path, **options) -> report` under a format name."""

    def deco(fn: Callable) -> Callable:
        _EXPORTERS[name] = fn
        return fn

    return deco


def list_exporters() -> list[str]:
    return sorted(set(_EXPORTERS) | set(_BUILTIN))


def get_exporter(name: str) -> Callable:
    """The export function registered for format `name` (BadInputError when unknown)."""
    key = str(name).strip().lower()
    if key not in _EXPORTERS and key in _BUILTIN:
        importlib.import_module(_BUILTIN[key])
    if key not in _EXPORTERS:
        raise BadInputError(f"unknown export format {name!r}; choose from {', '.join(list_exporters())}")
    return _EXPORTERS[key]
