"""The quantities a budget is measured in: MACs, parameters, ONNX Runtime latency.

Each lives behind one small function so it can be swapped for the project-wide tool
(slimkit.profile.counter.count_macs, slimkit.deploy.onnx_export) in one line.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["count_macs", "count_params", "onnx_session", "ort_runner", "ort_latency_ms", "export_onnx"]


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward at batch 1 (slimkit's counter: conv, linear, matmul and
    attention multiply-accumulates, each counted once; elementwise work is not MACs)."""
    from slimkit.profile.counter import count_macs as project_count

    with torch.no_grad():
        return int(project_count(model, example_inputs[:1]).total)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_session(model: nn.Module, example_inputs: torch.Tensor, threads: int = 1):
    """Export `model` to ONNX (opset 17, legacy exporter) and open an ONNX Runtime session on it."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="slimkit-prune-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, example_inputs, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str) -> None:
    """Export with the TorchScript-based exporter (stable for timm/torchvision models)."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example_inputs,), path, input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False)


def ort_runner(model: nn.Module, example_inputs: torch.Tensor, threads: int = 1) -> Callable[[], object]:
    """A zero-argument callable running `model` once on ONNX Runtime (for measure_interleaved)."""
    session = onnx_session(model, example_inputs, threads)
    feed = {session.get_inputs()[0].name: example_inputs.numpy()}
    return lambda: session.run(None, feed)


def ort_latency_ms(models: dict[str, nn.Module], example_inputs: torch.Tensor, threads: int = 1,
                   repetitions: int = 30, rounds: int = 5, min_time_s: float = 0.3) -> dict[str, dict]:
    """Median/IQR latency in ms of each model on ONNX Runtime, measured interleaved."""
    from slimkit.profile.timing import measure_interleaved

    runners = {name: ort_runner(m, example_inputs, threads) for name, m in models.items()}
    timings = measure_interleaved(runners, warmup=3, repetitions=repetitions, rounds=rounds, min_time_s=min_time_s)
    return {name: t.to_dict() for name, t in timings.items()}
