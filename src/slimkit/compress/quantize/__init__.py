"""int8 quantization for ONNX Runtime (static QDQ PTQ, QAT) and weight-only codebook compression.

One technique per module: ptq (static QDQ), equalize (cross-layer equalization), bias_correction,
sensitivity (mixed precision), speed_guard, tuner (Quantune), qat, codebook; pipeline runs the PTQ flow;
api holds the one verb, `quantize(model, config) -> QuantizedModel`, for all three.
Names load lazily so importing this package does not load onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PTQConfig": "config", "QATConfig": "config", "CodebookConfig": "config", "load_config": "config",
    "QuantSettings": "ptq", "Int8Builder": "ptq", "quantize_static_qdq": "ptq", "prepare_fp32": "ptq",
    "load_quant_data": "calib", "QuantData": "calib", "TensorReader": "calib",
    "equalize_": "equalize", "fold_batchnorm_": "fold", "correct_bias_": "bias_correction",
    "layer_sensitivity": "sensitivity", "keep_sensitive_float": "sensitivity",
    "speed_guard": "speed_guard", "speed_groups": "speed_guard", "OrtLatency": "speed_guard",
    "tune": "tuner", "grid_search": "tuner", "TuneSpace": "tuner",
    "quantize_ptq": "pipeline",
    "prepare_qat": "qat", "qat_finetune": "qat", "export_qat_onnx": "qat",
    "codebook_compress": "codebook", "save_codebook": "codebook", "load_codebook_": "codebook",
    "register_quantizer": "registry", "get_quantizer": "registry", "list_quantizers": "registry",
    "quantize": "api", "QuantizedModel": "api",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slimkit.compress.quantize' has no attribute {name!r}")
    return getattr(importlib.import_module(f"slimkit.compress.quantize.{module}"), name)
