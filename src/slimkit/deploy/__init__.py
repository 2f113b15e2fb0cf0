"""Verified export (ONNX fp32/int8) and edge techniques.

`export_onnx(model, input_size, path)` writes an ONNX file and always checks it
against PyTorch in ONNX Runtime. Heavy modules load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "export_onnx",
    "verify_onnx",
    "ExportReport",
    "ParityCheck",
    "register_exporter",
    "get_exporter",
    "list_exporters",
]

_LAZY = {
    "export_onnx": "slimkit.deploy.onnx_export",
    "verify_onnx": "slimkit.deploy.onnx_export",
    "ExportReport": "slimkit.deploy.onnx_export",
    "ParityCheck": "slimkit.deploy.onnx_export",
    "register_exporter": "slimkit.deploy.registry",
    "get_exporter": "slimkit.deploy.registry",
    "list_exporters": "slimkit.deploy.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slimkit.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
