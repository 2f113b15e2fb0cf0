"""ExecuTorch `.pte` with the XNNPACK delegate, from `torch.export`, checked in ExecuTorch's runtime.

fp32: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch. Ops XNNPACK
does not take stay on ExecuTorch's portable kernels (correct but slow): the report lists them.
int8: XNNPACKQuantizer (symmetric int8, per-channel weights) through pt2e on the calibration images,
checked against the pt2e fake-quant graph. The batch is fixed at 1 (ExecuTorch plans memory statically).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.artifact import (DEFAULT_ATOL, INT8_ATOL, ArtifactReport, check_images, conversion_error,
                                     example_input, quiet_convert, staged, torch_reference)
from slimkit.deploy.pt2e import calibrate_pt2e, export_program, pt2e_reference
from slimkit.deploy.registry import register_exporter
from slimkit.deploy.runtime import check_parity, open_runner, require_runtime, runtime_status
from slimkit.utils.modes import eval_mode

__all__ = ["export_executorch", "export_executorch_int8"]


def _lower(program) -> tuple[bytes, dict]:
    """XNNPACK-delegated ExecuTorch program bytes, and which ops stayed outside the delegate."""
    from slimkit.deploy.runtime import quiet_torchao_import

    quiet_torchao_import()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        import executorch.kernels.quantized  # noqa: F401  portable int8 kernels for ops left outside XNNPACK
    except ImportError:
        pass
    try:
        with quiet_convert():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            graph = edge.exported_program().graph_module.graph
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # SpecViolationError (op outside Core ATen), lowering errors
        raise conversion_error("executorch", exc) from exc
    delegates, portable = 0, []
    for node in graph.nodes:
        if node.op != "call_function" or "getitem" in str(node.target):
            continue
        if "call_delegate" in str(node.target):
            delegates += 1
        else:
            portable.append(str(node.target))
    return buffer, {"xnnpack_delegates": delegates, "portable_ops": sorted(set(portable))}


def _write(path: Path, program, reference, inputs, kind, precision, atol, input_size, reference_name) -> ArtifactReport:
    with staged(path) as tmp:
        start = time.perf_counter()
        buffer, notes = _lower(program)
        tmp.write_bytes(buffer)
        convert_s = time.perf_counter() - start
        check = check_parity(open_runner("executorch", tmp), reference, inputs, runtime="executorch",
                             reference_name=reference_name, atol=atol, batch_sizes=(1,), inputs_kind=kind)
    version = runtime_status("executorch")[0]
    return ArtifactReport("executorch", precision, str(path), [str(path)], path.stat().st_size,
                          f"executorch to_edge_transform_and_lower + XNNPACK {version}", "1", list(input_size), check,
                          {"convert": round(convert_s, 3)}, notes)


@register_exporter("executorch")
def export_executorch(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | os.PathLike,
    *,
    check_inputs: torch.Tensor | np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    **_: object,
) -> ArtifactReport:
    """ExecuTorch program of `model` (unchanged) at `path` (.pte), checked in ExecuTorch's runtime."""
    require_runtime("executorch")
    inputs, kind = check_images(input_size, check_inputs, seed=seed)
    with eval_mode(model):
        program = export_program(model, example_input(input_size, 1, seed), "executorch")
        return _write(Path(path).with_suffix(".pte"), program, torch_reference(model), inputs, kind, "fp32",
                      atol, input_size, "pytorch")


def export_executorch_int8(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | os.PathLike,
    *,
    calib_x: np.ndarray,
    check_inputs: np.ndarray,
    atol: float = INT8_ATOL,
    seed: int = 0,
) -> ArtifactReport:
    """int8 ExecuTorch program (XNNPACK quantizer, pt2e, calibrated on `calib_x`), checked against fake-quant."""
    require_runtime("executorch")
    from slimkit.deploy.runtime import quiet_torchao_import

    quiet_torchao_import()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    with eval_mode(model):
        example = example_input(input_size, 1, seed)
        program = export_program(model, example, "executorch")
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        converted = calibrate_pt2e(program, quantizer, calib_x, "executorch")
        quantized = export_program(converted, example, "executorch")
        report = _write(Path(path).with_suffix(".pte"), quantized, pt2e_reference(converted), check_inputs, "given",
                        "int8", atol, input_size, "fake-quant pt2e (XNNPACKQuantizer)")
    report.notes.update({"quantizer": "XNNPACKQuantizer symmetric int8, per-channel weights",
                         "calib_images": int(len(calib_x))})
    return report
