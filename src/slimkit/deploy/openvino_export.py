"""OpenVINO IR (`.xml` + `.bin`), converted straight from PyTorch and checked in OpenVINO Runtime.

fp32: `openvino.convert_model(model)` from the PyTorch module (no ONNX in between), saved with
`compress_to_fp16=False` (the default stores fp16 weights) and compiled with an f32 inference
precision (the default is bf16 on CPUs with bf16 units). The batch axis stays dynamic.

int8: OpenVINO reads the QDQ ONNX that `slimkit quantize` writes and runs its Q/DQ pairs as int8
kernels (low-precision transformations), so both runtimes share one calibration. The check compares
it with the fake-quant reference: the same QDQ graph run by ONNX Runtime with every fusion disabled.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.artifact import (DEFAULT_ATOL, INT8_ATOL, ArtifactReport, check_images, conversion_error,
                                     example_input, quiet_convert, staged, torch_reference)
from slimkit.deploy.registry import register_exporter
from slimkit.deploy.runtime import check_parity, open_runner, require_runtime
from slimkit.utils.modes import eval_mode

__all__ = ["export_openvino", "export_openvino_int8", "fake_quant_onnx_reference"]

log = logging.getLogger(__name__)


def _save(ov_model, tmp: Path) -> None:
    import openvino as ov

    ov.save_model(ov_model, str(tmp), compress_to_fp16=False)


def _report(path: Path, precision: str, converter: str, input_size, check, timings, notes=None) -> ArtifactReport:
    files = [str(path), str(path.with_suffix(".bin"))]
    size = sum(Path(f).stat().st_size for f in files)
    return ArtifactReport("openvino", precision, str(path), files, size, converter, "dynamic", list(input_size),
                          check, timings, notes or {})


@register_exporter("openvino")
def export_openvino(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | os.PathLike,
    *,
    check_inputs: torch.Tensor | np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    **_: object,
) -> ArtifactReport:
    """Convert `model` (unchanged; run in eval mode) to OpenVINO IR at `path` (.xml), checked in OpenVINO."""
    require_runtime("openvino")
    import openvino as ov

    path = Path(path).with_suffix(".xml")
    example = example_input(input_size, 1, seed)
    inputs, kind = check_images(input_size, check_inputs, seed=seed)
    with eval_mode(model):
        with staged(path, suffixes=(".bin",)) as tmp:
            start = time.perf_counter()
            try:
                with quiet_convert(), torch.no_grad():
                    ov_model = ov.convert_model(model, example_input=example,
                                                input=[ov.PartialShape([-1, *[int(v) for v in input_size]])])
            except Exception as exc:  # OpConversionFailure and friends
                raise conversion_error("openvino", exc) from exc
            _save(ov_model, tmp)
            convert_s = time.perf_counter() - start
            check = check_parity(open_runner("openvino", tmp), torch_reference(model), inputs, runtime="openvino",
                                 atol=atol, batch_sizes=(1, 2), inputs_kind=kind)
    return _report(path, "fp32", f"openvino.convert_model (PyTorch) {ov.__version__}", input_size, check,
                   {"convert": round(convert_s, 3)}, {"inference_precision": "f32", "weights": "fp32"})


def fake_quant_onnx_reference(qdq_path: str | Path):
    """`x -> [outputs]` of a QDQ ONNX graph executed op by op (Q then DQ in float): the fake-quant reference."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no QDQ fusion into int8 kernels
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    session = ort.InferenceSession(str(qdq_path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})


def export_openvino_int8(
    qdq_onnx: str | os.PathLike,
    path: str | os.PathLike,
    input_size: Sequence[int],
    *,
    check_inputs: np.ndarray,
    atol: float = INT8_ATOL,
) -> ArtifactReport:
    """OpenVINO IR of the QDQ int8 ONNX model at `qdq_onnx`, checked against its fake-quant reference."""
    require_runtime("openvino")
    import openvino as ov

    path = Path(path).with_suffix(".xml")
    with staged(path, suffixes=(".bin",)) as tmp:
        start = time.perf_counter()
        try:
            with quiet_convert():
                ov_model = ov.convert_model(str(qdq_onnx))
        except Exception as exc:
            raise conversion_error("openvino", exc) from exc
        _save(ov_model, tmp)
        convert_s = time.perf_counter() - start
        check = check_parity(open_runner("openvino", tmp), fake_quant_onnx_reference(qdq_onnx), check_inputs,
                             runtime="openvino", reference_name="fake-quant QDQ ONNX", atol=atol, batch_sizes=(1,))
    return _report(path, "int8", f"openvino.convert_model (QDQ ONNX) {ov.__version__}", input_size, check,
                   {"convert": round(convert_s, 3)}, {"source": str(qdq_onnx), "int8": "QDQ from slimkit quantize"})
