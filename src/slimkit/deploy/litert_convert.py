"""The LiteRT conversion itself (litert-torch), runnable in-process or in the converter's own venv.

litert-torch 0.10 pins xdsl 0.28, which pins typing-extensions < 4.13; that forces pydantic down to
2.11 and conflicts with executorch's dependencies (cattrs needs typing-extensions >= 4.14). So the
converter usually lives in a separate venv layered on the main one (`make litert-venv`), and
`slimkit.deploy.tflite_export` runs this module there:

    python -m slimkit.deploy.litert_convert JOB_DIR

JOB_DIR holds program.pt2 (a torch.export program saved by the caller), job.json, and for int8
calib.npy and check.npy. This writes model.tflite, for int8 reference.npy (the fake-quant outputs on
check.npy), and result.json ({"ok": true} or {"ok": false, "error": one line}).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["convert_job", "converter_version"]


def converter_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("litert-torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def convert_job(job_dir: str | Path) -> dict:
    """Convert the job in `job_dir` (see the module docstring); raises on conversion errors."""
    from slimkit.deploy.runtime import quiet_torchao_import

    quiet_torchao_import()
    import litert_torch

    from slimkit.deploy.artifact import quiet_convert
    from slimkit.deploy.pt2e import calibrate_pt2e, pt2e_reference

    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    program = torch.export.load(str(job_dir / "program.pt2"))  # written by our own caller, same torch
    example = tuple(program.example_inputs[0])
    module, options = program.module(), {}
    if job["precision"] == "int8":
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        module = calibrate_pt2e(program, quantizer, np.load(job_dir / "calib.npy"), "tflite", fold_quantize=False)
        np.save(job_dir / "reference.npy", pt2e_reference(module)(np.load(job_dir / "check.npy"))[0])
        options["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    with quiet_convert():
        edge = litert_torch.convert(module, example, **options)
        edge.export(str(job_dir / "model.tflite"))
    return {"ok": True, "litert_torch": converter_version()}


def main(argv: list[str] | None = None) -> int:
    import contextlib
    import logging
    import os

    args = sys.argv[1:] if argv is None else argv
    job_dir = Path(args[0])
    logging.disable(logging.WARNING)
    try:
        # the converter's native code logs to fd 2; the caller reads result.json, not our output
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            result = convert_job(job_dir)
    except Exception as exc:  # reported to the caller as data, never as a traceback
        from slimkit.deploy.artifact import conversion_error

        result = {"ok": False, "error": str(conversion_error("tflite", exc))}
    finally:
        logging.disable(logging.NOTSET)  # called in-process too: leave the caller's logging as it was
    (job_dir / "result.json").write_text(json.dumps(result))
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
