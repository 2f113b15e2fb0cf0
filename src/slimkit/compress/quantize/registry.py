"""The quantizer registry: one handler per config kind (`@register_quantizer("ptq")`), torchao style.

A quantizer is the handler of one technique, called by `quantize(model, config)` for configs of its kind:
  ptq       PTQConfig       static QDQ int8 for ONNX Runtime (quantize_ptq)
  qat       QATConfig       fake-quant training, exported as QDQ int8 ONNX
  codebook  CodebookConfig  weight-only codebooks with learnable centroids
`handler(model, config, *, data, input_size, out_dir, teacher, seed, **options) -> QuantizedModel`.
"""

from __future__ import annotations

from typing import Callable

from slimkit.utils.registry import Registry

__all__ = ["QUANTIZERS", "register_quantizer", "get_quantizer", "list_quantizers"]

_HANDLERS = "slimkit.compress.quantize.api"
QUANTIZERS: Registry = Registry("quantizer", modules={"ptq": _HANDLERS, "qat": _HANDLERS, "codebook": _HANDLERS})
_QUANTIZERS = QUANTIZERS  # older name


def register_quantizer(name: str) -> Callable[[Callable], Callable]:
    return QUANTIZERS.register(name)


def list_quantizers() -> list[str]:
    return QUANTIZERS.names()


def get_quantizer(name: str) -> Callable:
    return QUANTIZERS.get(name)
