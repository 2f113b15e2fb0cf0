"""Latency in PyTorch eager and ONNX Runtime, and the machine's matmul ceiling, in one run."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimkit.profile.timing import Timing, measure_interleaved

__all__ = ["measure_latency", "matmul_ceiling_gmacs", "export_for_timing"]

log = logging.getLogger(__name__)
CEILING_SIZES = (1024, 2048)  # square fp32 matmuls that measure the machine's attainable GMAC/s


def matmul_ceiling_gmacs(threads: int, sizes: tuple[int, ...] = CEILING_SIZES, repetitions: int = 6) -> float:
    """Attainable fp32 GMAC/s at the current thread count: the best square torch matmul of `sizes`.

    The fastest call (not the median) is the ceiling: it is what the machine can reach.
    """
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        timing = measure_interleaved({"mm": lambda: torch.mm(a, b)}, warmup=2, repetitions=repetitions, rounds=2)["mm"]
        best = max(best, size**3 / (timing.min / 1e3) / 1e9)
    return best


def export_for_timing(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export with the project's one exporter (verified against PyTorch), dynamic batch axis."""
    from slimkit.deploy.onnx_export import export_onnx

    export_onnx(model, tuple(example.shape[1:]), path)
    return path


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    *,
    threads: int,
    onnxruntime: bool = True,
    repetitions: int = 50,
    warmup: int = 10,
    min_time_s: float = 1.0,
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Median/p90 latency of `model(example)` (unchanged model) in torch and ORT, interleaved.

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
            timings = measure_interleaved(
                candidates, warmup=warmup, repetitions=repetitions, rounds=5, min_time_s=min_time_s
            )
    finally:
        torch.set_num_threads(previous)
    return timings, errors
