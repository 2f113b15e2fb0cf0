"""Measure what int8 buys a model on ONNX Runtime, so a latency or size budget can be split between pruning and int8.

The gain is measured (fp32 and a quick min/max int8 build, timed interleaved in one run),
never taken from a table: on small or narrow models int8 often gains nothing at all. Likewise
the int8 file is measured, not assumed 4x smaller: scales, zero points, int32 biases, layers
kept in float and the graph itself weigh as much as the weights in a small model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch.nn as nn

__all__ = ["measure_int8_gain", "measure_int8_gain_pruned", "measure_int8_size"]

MAX_GAIN = 4.0  # never plan on more than VNNI's 4x: a larger figure is a timing outlier


def measure_int8_gain(model: nn.Module, input_size, calib_x: np.ndarray, threads: int) -> dict:
    """fp32 / int8 median latency ratio of `model` (unchanged) at batch 1, with both timings."""
    from slimkit.deploy.onnx_export import ort_session
    from slimkit.profile.timing import measure_interleaved

    with tempfile.TemporaryDirectory(prefix="slimkit-int8-gain-") as tmp:
        src, int8 = _build_int8(model, input_size, calib_x, Path(tmp))
        # fp32 is timed as exported, the form every other latency figure in slimkit uses.
        sessions = {"fp32": ort_session(src, threads), "int8": ort_session(int8, threads)}
        x = np.ascontiguousarray(calib_x[:1], dtype=np.float32)
        feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
        timings = measure_interleaved({k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()},
                                      warmup=10, repetitions=60, rounds=6, min_time_s=1.0)
    gain = min(MAX_GAIN, timings["fp32"].median / timings["int8"].median)
    return {"gain": gain, "measured_gain": timings["fp32"].median / timings["int8"].median, "fp32_ms": timings["fp32"].to_dict(),
            "int8_ms": timings["int8"].to_dict(), "threads": threads}


def measure_int8_gain_pruned(model: nn.Module, input_size, calib_x: np.ndarray, threads: int,
                             macs_fraction: float) -> dict | None:
    """int8's gain on a copy of `model` (unchanged) cut to about `macs_fraction` of its MACs, None if no such cut.

    A pruned model gains less from int8 than its parent (narrow layers are dominated by the
    quantize/dequantize and per-call work that int8 does not speed up), so the plan checks the gain
    at the size it is about to prune to. The copy's weights need not be good: only its shapes are timed.
    """
    import copy

    import torch

    from slimkit.compress.prune import PruneConfig, prune_
    from slimkit.errors import SlimkitError

    proxy = copy.deepcopy(model).eval()
    try:
        prune_(proxy, PruneConfig(target=f"macs={macs_fraction:.4f}"), torch.randn(1, *input_size))
    except SlimkitError:
        return None
    return {**measure_int8_gain(proxy, input_size, calib_x, threads), "macs_fraction": macs_fraction}


def measure_int8_size(model: nn.Module, input_size, calib_x: np.ndarray) -> dict:
    """File bytes of `model` (unchanged) exported fp32 and quantized int8, and its parameter count."""
    with tempfile.TemporaryDirectory(prefix="slimkit-int8-size-") as tmp:
        src, int8 = _build_int8(model, input_size, calib_x, Path(tmp))
        return {"fp32_bytes": src.stat().st_size, "int8_bytes": int8.stat().st_size,
                "params": sum(p.numel() for p in model.parameters())}


def _build_int8(model: nn.Module, input_size, calib_x: np.ndarray, tmp: Path) -> tuple[Path, Path]:
    from slimkit.compress.quantize.int8_format import choose_format
    from slimkit.compress.quantize.ptq import QuantSettings, prepare_fp32, quantize_static_qdq
    from slimkit.deploy.onnx_export import export_onnx

    src = tmp / "fp32.onnx"
    export_onnx(model, input_size, src)
    fp32 = prepare_fp32(src, tmp / "pre.onnx")
    weights = choose_format().weights  # this machine times it: the format it would get
    return src, quantize_static_qdq(fp32, tmp / "int8.onnx", calib_x.astype(np.float32), QuantSettings(weights=weights))
