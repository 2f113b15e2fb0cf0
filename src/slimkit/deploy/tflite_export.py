"""LiteRT (TFLite) flatbuffers from PyTorch via litert-torch, checked in the LiteRT interpreter.

fp32: litert_torch.convert on the torch.export program. int8: full-integer conversion (int8 input and
output tensors, int8 weights per channel) through pt2e with litert-torch's PT2EQuantizer on the same
calibration images as the other runtimes, checked against the pt2e fake-quant graph. Batch fixed at 1.

The converter runs in this process when `litert_torch` imports here, else in the Python named by
SLIMKIT_LITERT_PYTHON, else in `.venv-litert` beside the running venv (made by `make litert-venv`);
see slimkit.deploy.litert_convert for why it usually needs its own venv. The check always runs here,
in `ai-edge-litert`'s interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.artifact import (DEFAULT_ATOL, INT8_ATOL, ArtifactReport, check_images, example_input, staged,
                                     torch_reference)
from slimkit.deploy.pt2e import export_program
from slimkit.deploy.registry import register_exporter
from slimkit.deploy.runtime import RuntimeUnavailable, check_parity, open_runner, require_runtime, runtime_status
from slimkit.utils.modes import eval_mode

__all__ = ["export_tflite", "export_tflite_int8", "converter_python", "converter_status"]

CONVERT_TIMEOUT_S = 1800


def converter_python() -> str | None:
    """None: convert in-process; else the interpreter of the converter venv. RuntimeUnavailable if neither."""
    if importlib.util.find_spec("litert_torch") is not None:
        return None
    candidates = [os.environ.get("SLIMKIT_LITERT_PYTHON"), str(Path(sys.prefix).parent / ".venv-litert" / "bin" / "python")]
    for python in filter(None, candidates):
        if Path(python).is_file():
            return python
    raise RuntimeUnavailable(
        "tflite: the LiteRT converter (litert-torch) is not installed: `make litert-venv`, or pip install "
        "'slimkit[tflite]' into its own venv and set SLIMKIT_LITERT_PYTHON to its python")


def converter_status() -> str | None:
    """Why tflite export is unavailable here, or None when it is available."""
    try:
        require_runtime("tflite")
        converter_python()
    except RuntimeUnavailable as exc:
        return str(exc)
    return None


def _convert(program, precision: str, out: Path, calib_x=None, check_x=None) -> tuple[np.ndarray | None, str]:
    """Run the conversion job; returns (fake-quant reference outputs for int8, where it ran)."""
    from slimkit.deploy.litert_convert import convert_job

    python = converter_python()
    with tempfile.TemporaryDirectory(prefix="slimkit-litert-") as tmp:
        job = Path(tmp)
        torch.export.save(program, str(job / "program.pt2"))
        (job / "job.json").write_text(json.dumps({"precision": precision}))
        if precision == "int8":
            np.save(job / "calib.npy", np.ascontiguousarray(calib_x, np.float32))
            np.save(job / "check.npy", np.ascontiguousarray(check_x, np.float32))
        if python is None:
            from slimkit.deploy.artifact import conversion_error

            try:
                convert_job(job)
            except Exception as exc:
                raise conversion_error("tflite", exc) from exc
            where = "in-process"
        else:
            _run_worker(python, job)
            where = f"converter venv {python}"
        os.replace(job / "model.tflite", out)
        reference = np.load(job / "reference.npy") if precision == "int8" else None
    return reference, where


def _run_worker(python: str, job: Path) -> None:
    from slimkit.errors import BadInputError

    proc = subprocess.run([python, "-m", "slimkit.deploy.litert_convert", str(job)], capture_output=True, text=True,
                          timeout=CONVERT_TIMEOUT_S)
    result_file = job / "result.json"
    if not result_file.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise BadInputError(f"tflite: the converter process failed (exit {proc.returncode}): {tail[0][:300]}")
    result = json.loads(result_file.read_text())
    if not result.get("ok"):
        raise BadInputError(result.get("error", "tflite: conversion failed"))


def _report(path: Path, precision: str, input_size, check, convert_s: float, where: str, notes=None) -> ArtifactReport:
    version = runtime_status("tflite")[0]
    return ArtifactReport("tflite", precision, str(path), [str(path)], path.stat().st_size,
                          f"litert_torch.convert ({where}); interpreter ai-edge-litert {version}", "1", list(input_size),
                          check, {"convert": round(convert_s, 3)}, notes or {})


@register_exporter("tflite")
def export_tflite(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | os.PathLike,
    *,
    check_inputs: torch.Tensor | np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    **_: object,
) -> ArtifactReport:
    """LiteRT flatbuffer of `model` (unchanged) at `path` (.tflite), checked in the LiteRT interpreter."""
    require_runtime("tflite")
    converter_python()
    inputs, kind = check_images(input_size, check_inputs, seed=seed)
    path = Path(path).with_suffix(".tflite")
    with eval_mode(model):
        with staged(path) as tmp:
            start = time.perf_counter()
            _, where = _convert(export_program(model, example_input(input_size, 1, seed), "tflite"), "fp32", tmp)
            convert_s = time.perf_counter() - start
            check = check_parity(open_runner("tflite", tmp), torch_reference(model), inputs, runtime="tflite",
                                 atol=atol, batch_sizes=(1,), inputs_kind=kind)
    return _report(path, "fp32", input_size, check, convert_s, where)


def export_tflite_int8(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | os.PathLike,
    *,
    calib_x: np.ndarray,
    check_inputs: np.ndarray,
    atol: float = INT8_ATOL,
    seed: int = 0,
) -> ArtifactReport:
    """Full-integer LiteRT model (pt2e PT2EQuantizer on `calib_x`), checked against its fake-quant graph."""
    require_runtime("tflite")
    converter_python()
    check_x = np.ascontiguousarray(check_inputs[:4], np.float32)
    path = Path(path).with_suffix(".tflite")
    with eval_mode(model):
        program = export_program(model, example_input(input_size, 1, seed), "tflite")
        with staged(path) as tmp:
            start = time.perf_counter()
            reference, where = _convert(program, "int8", tmp, calib_x, check_x)
            convert_s = time.perf_counter() - start
            stored = {x.tobytes(): r for x, r in zip(check_x, reference)}  # fake-quant outputs, row by row
            check = check_parity(open_runner("tflite", tmp), lambda x: [np.stack([stored[r.tobytes()] for r in x])],
                                 check_x, runtime="tflite", reference_name="fake-quant pt2e (PT2EQuantizer)",
                                 atol=atol, batch_sizes=(1,))
    return _report(path, "int8", input_size, check, convert_s, where,
                   {"quantizer": "litert-torch PT2EQuantizer symmetric int8, per-channel weights",
                    "calib_images": int(len(calib_x)), "io": "int8 input and output tensors (full integer)"})
