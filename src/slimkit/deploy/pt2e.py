"""PyTorch 2 export quantization (pt2e): the int8 path of ExecuTorch (XNNPACK) and LiteRT.

Both runtimes take a graph that `prepare_pt2e` annotated with their quantizer, calibrated on the same
images as `slimkit quantize`, and `convert_pt2e` turned into quantize/dequantize ops in float: that
converted graph is the fake-quant reference each int8 artifact is checked against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from slimkit.errors import BadInputError

__all__ = ["export_program", "calibrate_pt2e", "pt2e_reference"]


def export_program(model: nn.Module, example: torch.Tensor, runtime: str):
    """`torch.export` of the model (already in eval mode) at a fixed batch; BadInputError naming the runtime."""
    from slimkit.deploy.artifact import conversion_error, quiet_convert

    try:
        with quiet_convert(), torch.no_grad():
            return torch.export.export(model, (example,))
    except Exception as exc:  # graph breaks, data-dependent shapes, unsupported ops
        raise conversion_error(runtime, exc) from exc


def calibrate_pt2e(program, quantizer, calib_x: np.ndarray, runtime: str, fold_quantize: bool = True) -> torch.fx.GraphModule:
    """prepare_pt2e -> observe `calib_x` one image at a time (the program's batch) -> convert_pt2e."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from slimkit.deploy.artifact import conversion_error, quiet_convert

    if calib_x is None or not len(calib_x):
        raise BadInputError(f"{runtime}: int8 needs calibration images")
    batch = int(program.example_inputs[0][0].shape[0])
    try:
        with quiet_convert():
            prepared = prepare_pt2e(program.module(), quantizer)
            with torch.no_grad():
                for i in range(0, len(calib_x) - batch + 1, batch):
                    prepared(torch.from_numpy(np.ascontiguousarray(calib_x[i : i + batch], dtype=np.float32)))
            converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
            move_exported_model_to_eval(converted)
    except Exception as exc:
        raise conversion_error(runtime, exc) from exc
    return converted


def pt2e_reference(converted: torch.fx.GraphModule, batch: int = 1):
    """`x -> [outputs]` of the fake-quant graph, run `batch` rows at a time (the batch it was exported with)."""
    from slimkit.deploy.onnx_export import _flatten

    def run(x: np.ndarray) -> list[np.ndarray]:
        parts = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], np.float32))
                parts.append([t.float().numpy() for t in _flatten(converted(chunk))])
        return [np.concatenate(outs) for outs in zip(*parts)]

    return run
