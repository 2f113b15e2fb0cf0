"""One model to several runtimes in one call: each artifact checked in its runtime, then all timed interleaved.

`export_multi` writes into `out_dir` (atomically: all or nothing when `strict`):
    model.onnx, model.xml/.bin, model.tflite, model.pte           fp32, checked against PyTorch
    model.int8.onnx, model.int8.xml/.bin, model.int8.tflite, ...   int8 (when `int8` is given), checked
                                                                   against each path's fake-quant reference
    deploy.json                                                    file, size, check, latency, top-1 per artifact
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch.nn as nn

from slimkit.deploy.runtime import RUNTIMES, RuntimeUnavailable, get_runtime, runtime_status
from slimkit.errors import BadInputError
from slimkit.utils.io import atomic_dir, atomic_write_json

__all__ = ["Int8Source", "export_multi", "runtime_unavailable_reason", "DEPLOY_VERSION"]

log = logging.getLogger(__name__)
DEPLOY_VERSION = 1


@dataclass
class Int8Source:
    """The int8 inputs shared by every runtime: `slimkit quantize`'s QDQ ONNX and its calibration images."""

    qdq_onnx: Path | None  # consumed by ONNX Runtime and OpenVINO; None: those two get no int8 artifact
    calib_x: np.ndarray  # the calibration images quantize used (pt2e paths calibrate on the same)
    val_x: np.ndarray | None = None  # labelled images for top-1 (None: no accuracy)
    val_y: np.ndarray | None = None
    origin: str = ""


def runtime_unavailable_reason(name: str) -> str | None:
    """Why `name` cannot be exported to here (runtime or converter missing), or None."""
    if name == "tflite":
        from slimkit.deploy.tflite_export import converter_status

        return converter_status()
    version, why = runtime_status(name)
    return None if version else f"{name}: {why}"


def _fp32(model, input_size, runtime: str, folder: Path, check_x: np.ndarray, atol: float):
    from slimkit.deploy.registry import get_exporter

    rt = get_runtime(runtime)
    if runtime == "onnx":  # its check takes a tensor, at batch 1 and 2
        import torch

        return get_exporter("onnx")(model, input_size, folder / "model.onnx", check_inputs=torch.from_numpy(check_x),
                                    atol=atol)
    return get_exporter(runtime)(model, input_size, folder / f"model{rt.suffix}", check_inputs=check_x, atol=atol)


def _int8(model, input_size, runtime: str, folder: Path, int8: Int8Source, check_x: np.ndarray):
    rt = get_runtime(runtime)
    path = folder / f"model.int8{rt.suffix}"
    if runtime in ("onnx", "openvino") and int8.qdq_onnx is None:
        raise BadInputError(f"{runtime}: int8 needs the QDQ ONNX from `slimkit quantize` (--int8 DIR)")
    if runtime == "onnx":
        return _onnx_int8(int8.qdq_onnx, path, input_size, check_x)
    if runtime == "openvino":
        from slimkit.deploy.openvino_export import export_openvino_int8

        return export_openvino_int8(int8.qdq_onnx, path, input_size, check_inputs=check_x)
    if runtime == "tflite":
        from slimkit.deploy.tflite_export import export_tflite_int8

        return export_tflite_int8(model, input_size, path, calib_x=int8.calib_x, check_inputs=check_x)
    from slimkit.deploy.executorch_export import export_executorch_int8

    return export_executorch_int8(model, input_size, path, calib_x=int8.calib_x, check_inputs=check_x)


def _onnx_int8(qdq: Path, path: Path, input_size, check_x: np.ndarray):
    """The QDQ ONNX as quantize produced it, checked in ORT (int8 kernels) against its fake-quant run."""
    from slimkit.deploy.artifact import INT8_ATOL, ArtifactReport, staged
    from slimkit.deploy.openvino_export import fake_quant_onnx_reference
    from slimkit.deploy.runtime import check_parity, open_runner

    with staged(path) as tmp:
        shutil.copyfile(qdq, tmp)
        check = check_parity(open_runner("onnx", tmp), fake_quant_onnx_reference(tmp), check_x, runtime="onnx",
                             reference_name="fake-quant QDQ ONNX", atol=INT8_ATOL, batch_sizes=(1,))
    return ArtifactReport("onnx", "int8", str(path), [str(path)], path.stat().st_size, "slimkit quantize (QDQ)",
                          "dynamic", list(input_size), check, {}, {"source": str(qdq)})


def _top1(runtime: str, path: str, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    from slimkit.deploy.runtime import open_runner

    run = open_runner(runtime, path, threads=1)
    preds = np.concatenate([np.asarray(run(x[i : i + batch])[0]).argmax(1) for i in range(0, len(x), batch)])
    return float((preds == y).mean() * 100.0)


def _select(runtimes: Sequence[str], strict: bool) -> tuple[list[str], dict[str, str]]:
    chosen, unavailable = [], {}
    for name in runtimes:
        reason = runtime_unavailable_reason(get_runtime(name).name)
        if reason is None:
            chosen.append(name)
        elif strict:
            raise RuntimeUnavailable(reason)
        else:
            unavailable[name] = reason
    return chosen, unavailable


def export_multi(
    model: nn.Module,
    input_size: Sequence[int],
    out_dir: str | Path,
    runtimes: Sequence[str],
    *,
    check_x: np.ndarray,
    int8: Int8Source | None = None,
    threads: int = 1,
    latency: bool = True,
    repetitions: int = 50,
    atol: float = 1e-4,
    skip_unavailable: bool = False,
    say: Callable[[str], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `model` (unchanged) to every runtime in `runtimes`; returns deploy.json's content.

    Any failed conversion or check raises (one line naming the runtime) and leaves `out_dir` untouched.
    `atol`: fp32 parity tolerance relative to max(1, output scale); int8 uses artifact.INT8_ATOL.
    `skip_unavailable`: runtimes not installed here are recorded as unavailable instead of raising.
    """
    say = say or (lambda msg: log.info(msg))
    names = [get_runtime(r).name for r in runtimes]
    chosen, unavailable = _select(names, strict=not skip_unavailable)
    if not chosen:
        raise RuntimeUnavailable("no requested runtime is available here: " + "; ".join(unavailable.values()))
    out_dir = Path(out_dir)
    input_size = tuple(int(v) for v in input_size)
    check_x = np.ascontiguousarray(check_x, dtype=np.float32)
    with atomic_dir(out_dir) as tmp:
        artifacts: dict[str, Any] = {}
        for name in chosen:
            say(f"{name}: exporting fp32 and checking it in {RUNTIMES[name].title}")
            artifacts[f"{name}:fp32"] = _fp32(model, input_size, name, tmp, check_x, atol)
            if int8 is not None:
                say(f"{name}: int8, checked against its fake-quant reference")
                artifacts[f"{name}:int8"] = _int8(model, input_size, name, tmp, int8, check_x)
        entries = {key: _entry(rep, tmp) for key, rep in artifacts.items()}
        if int8 is not None and int8.val_x is not None:
            say(f"top-1 of every int8 artifact on {len(int8.val_y)} labelled images")
            _accuracy(model, entries, tmp, int8)
        timing = _latency(entries, tmp, check_x[:1], threads, repetitions, model, say) if latency else None
        data = {"version": DEPLOY_VERSION, "input_size": list(input_size), "runtimes": chosen,
                "unavailable": unavailable, "artifacts": entries, "latency": timing,
                "int8": None if int8 is None else {"origin": int8.origin, "calib_images": int(len(int8.calib_x)),
                                                  "qdq_onnx": str(int8.qdq_onnx) if int8.qdq_onnx else None},
                **(extra or {})}
        atomic_write_json(tmp / "deploy.json", data)
    return data


def _entry(report, folder: Path) -> dict[str, Any]:
    data = report.to_dict()
    data["file"] = Path(report.path).name
    data["files"] = [Path(f).name for f in getattr(report, "files", [report.path])]
    data.pop("path", None)
    if "runtime" not in data:  # the ONNX exporter's report
        data.update(runtime="onnx", precision="fp32", batch="dynamic" if data.get("dynamic_batch") else "1")
    return data


def _accuracy(model: nn.Module, entries: dict, folder: Path, int8: Int8Source) -> None:
    from slimkit.deploy.artifact import torch_reference

    x, y = np.ascontiguousarray(int8.val_x, np.float32), np.asarray(int8.val_y)
    ref = torch_reference(model.eval())
    fp32 = float((np.concatenate([ref(x[i : i + 64])[0].argmax(1) for i in range(0, len(x), 64)]) == y).mean() * 100)
    for entry in entries.values():
        if entry["precision"] != "int8":
            continue
        batch = 64 if entry["batch"] == "dynamic" else int(entry["batch"])
        top1 = _top1(entry["runtime"], str(folder / entry["file"]), x, y, batch)
        entry["accuracy"] = {"top1": top1, "pytorch_fp32_top1": fp32, "change": top1 - fp32, "images": int(len(y))}


def _latency(entries: dict, folder: Path, x: np.ndarray, threads: int, repetitions: int, model: nn.Module,
             say) -> dict[str, Any]:
    import torch

    from slimkit.profile.latency import time_artifacts
    from slimkit.profile.profiler import _cpu_name

    say(f"timing {len(entries)} artifacts and PyTorch interleaved ({threads} thread(s), batch 1)")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    example = torch.from_numpy(x)

    def run_torch():
        with torch.no_grad():
            model(example)

    try:
        timings = time_artifacts({k: (e["runtime"], folder / e["file"]) for k, e in entries.items()}, x,
                                 threads=threads, extra={"pytorch:fp32": run_torch}, repetitions=repetitions)
    finally:
        torch.set_num_threads(previous)
    for key, entry in entries.items():
        entry["latency_ms"] = timings[key].to_dict()
    fastest = {}
    for precision in ("fp32", "int8"):
        keys = [k for k in entries if entries[k]["precision"] == precision]
        if keys:
            fastest[precision] = min(keys, key=lambda k: timings[k].median).split(":")[0]
    return {"threads": threads, "batch": 1, "input": "one check image", "interleaved": True,
            "repetitions": min(t.repetitions for t in timings.values()), "cpu": _cpu_name(),
            "pytorch_fp32_ms": timings["pytorch:fp32"].to_dict(), "fastest": fastest,
            "median_ms": {k: t.median for k, t in timings.items()}}
