"""The quantizer registry: one decorator per plug-in kind (`@register_quantizer("ptq")`).

A quantizer is the entry point of one technique; each takes a model and its own config kind:
  ptq       quantize_ptq(model, input_size, data, PTQConfig, out_dir) -> report (ONNX int8 files)
  qat       prepare_qat(model, QATConfig) -> fake-quant model (then qat_finetune, export_qat_onnx)
  codebook  codebook_compress(model, CodebookConfig, x, y) -> CodebookResult (then save_codebook)
"""

from __future__ import annotations

import importlib
from typing import Callable

from slimkit.errors import BadInputError

__all__ = ["register_quantizer", "get_quantizer", "list_quantizers"]

_QUANTIZERS: dict[str, Callable] = {}
_BUILTIN = {
    "ptq": ("slimkit.compress.quantize.pipeline", "quantize_ptq"),
    "qat": ("slimkit.compress.quantize.qat", "prepare_qat"),
    "codebook": ("slimkit.compress.quantize.codebook", "codebook_compress"),
}


def register_quantizer(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        _QUANTIZERS[name] = fn
        return fn

    return deco


def list_quantizers() -> list[str]:
    return sorted(set(_QUANTIZERS) | set(_BUILTIN))


def get_quantizer(name: str) -> Callable:
    key = str(name).strip().lower()
    if key not in _QUANTIZERS and key in _BUILTIN:
        module, attr = _BUILTIN[key]
        _QUANTIZERS[key] = getattr(importlib.import_module(module), attr)
    if key not in _QUANTIZERS:
        raise BadInputError(f"unknown quantizer {name!r}; choose from {', '.join(list_quantizers())}")
    return _QUANTIZERS[key]
