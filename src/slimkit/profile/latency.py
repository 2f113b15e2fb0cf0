"""Latency in PyTorch eager, ONNX Runtime and the deploy runtimes, and the machine's matmul ceiling, in one run."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import torch
import torch.nn as nn

from slimkit.profile.timing import Timing, measure_interleaved

__all__ = ["measure_latency", "matmul_ceiling_gmacs", "export_for_timing", "time_artifacts"]

log = logging.getLogger(__name__)
CEILING_SIZES = (1024, 2048)  # square fp32 matmuls that measure the machine's attainable GMAC/s


def matmul_ceiling_gmacs(threads: int, sizes: tuple[int, ...] = CEILING_SIZES, repetitions: int = 6) -> float:
    """Attainable fp32 GMAC/s at the current thread count: the best square torch matmul of `sizes`.

    The fastest call (not the median) is the ceiling: it is what the machine can reach.
    """
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        timing = measure_interleaved({"mm": lambda a=a, b=b: torch.mm(a, b)}, warmup=2, repetitions=repetitions, rounds=2)["mm"]
        best = max(best, size**3 / (timing.min / 1e3) / 1e9)
    return best


def export_for_timing(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export with the project's one exporter (verified against PyTorch), dynamic batch axis."""
    from slimkit.deploy.onnx_export import export_onnx

    export_onnx(model, tuple(example.shape[1:]), path)
    return path


def time_artifacts(
    artifacts: dict[str, tuple[str, str | Path]],
    example: np.ndarray,
    *,
    threads: int,
    extra: dict[str, Any] | None = None,
    repetitions: int = 50,
    warmup: int = 10,
    rounds: int = 5,
    min_time_s: float = 1.0,
) -> dict[str, Timing]:
    """Time deploy artifacts ({label: (runtime, path)}) in their own runtimes, interleaved, at `threads`.

    `extra`: more zero-argument candidates timed in the same rounds (e.g. PyTorch eager).
    """
    from slimkit.deploy.runtime import open_runner

    x = np.ascontiguousarray(example, dtype=np.float32)
    candidates = dict(extra or {})
    for label, (runtime, path) in artifacts.items():
        runner = open_runner(runtime, path, threads)
        candidates[label] = lambda run=runner: run(x)
    return measure_interleaved(candidates, warmup=warmup, repetitions=repetitions, rounds=rounds, min_time_s=min_time_s)


def _runtime_artifacts(model: nn.Module, example: torch.Tensor, runtimes: Sequence[str], tmp: Path,
                       errors: dict[str, str]) -> dict[str, tuple[str, Path]]:
    """Verified exports of `model` for each deploy runtime that is available; the others go to `errors`."""
    from slimkit.deploy.registry import get_exporter
    from slimkit.deploy.runtime import get_runtime
    from slimkit.errors import SlimkitError

    found = {}
    for name in runtimes:
        rt = get_runtime(name)
        try:
            report = get_exporter(rt.name)(model, tuple(example.shape[1:]), tmp / f"model{rt.suffix}",
                                           check_inputs=example)
            found[rt.name] = (rt.name, Path(report.path))
        except SlimkitError as exc:  # unavailable runtime or a model it cannot convert: say so, keep the others
            errors[rt.name] = str(exc)
            log.warning("%s latency unavailable: %s", rt.name, exc)
    return found


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    threads: int,
    onnxruntime: bool = True,
    runtimes: Sequence[str] = (),
    repetitions: int = 50,
    warmup: int = 10,
    min_time_s: float = 1.0,
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Median/p90 latency of `model(example)` (unchanged model) in torch, ORT and `runtimes`, interleaved.

    `runtimes`: deploy runtimes besides ONNX Runtime (openvino, tflite, executorch), each timed on its
    verified artifact (fixed-batch runtimes need a batch-1 example).
    Returns (timings by runtime, errors by runtime for any runtime that could not run).
    """
    from slimkit.deploy.onnx_export import ort_session

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    candidates: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def run_torch() -> None:
        with torch.no_grad():
            model(example)

    candidates["torch"] = run_torch
    try:
        with tempfile.TemporaryDirectory(prefix="slimkit-ort-") as tmp:
            if onnxruntime:
                try:
                    session = ort_session(export_for_timing(model, example, Path(tmp) / "model.onnx"), threads)
                    feed = {session.get_inputs()[0].name: example.numpy()}
                    candidates["onnxruntime"] = lambda: session.run(None, feed)
                except Exception as exc:  # report, don't fail the whole profile
                    errors["onnxruntime"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    log.warning("ONNX Runtime latency unavailable: %s", errors["onnxruntime"])
            others = [r for r in runtimes if r != "onnx"]
            artifacts = _runtime_artifacts(model, example, others, Path(tmp), errors) if others else {}
            timings = time_artifacts(artifacts, example.numpy(), threads=threads, extra=candidates,
                                     repetitions=repetitions, warmup=warmup, min_time_s=min_time_s)
    finally:
        torch.set_num_threads(previous)
    return timings, errors
