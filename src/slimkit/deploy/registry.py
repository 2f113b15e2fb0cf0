"""The exporter registry: one decorator per plug-in kind (`@register_exporter("onnx")`)."""

from __future__ import annotations

from typing import Callable

from slimkit.utils.registry import Registry

__all__ = ["EXPORTERS", "register_exporter", "get_exporter", "list_exporters"]

# Built-in exporters live in their own modules; importing one registers it.
_BUILTIN = {
    "onnx": "slimkit.deploy.onnx_export",
    "openvino": "slimkit.deploy.openvino_export",
    "tflite": "slimkit.deploy.tflite_export",
    "executorch": "slimkit.deploy.executorch_export",
}
EXPORTERS: Registry = Registry("export format", modules=_BUILTIN)
_EXPORTERS = EXPORTERS  # older name


def register_exporter(name: str) -> Callable[[Callable], Callable]:
    """Register `fn(model, input_size, path, **options) -> report` under a format name."""
    return EXPORTERS.register(name)


def list_exporters() -> list[str]:
    return EXPORTERS.names()


def get_exporter(name: str) -> Callable:
    """The export function registered for format `name` (BadInputError when unknown)."""
    return EXPORTERS.get(name)
