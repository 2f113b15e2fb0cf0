"""The quantities a pruning budget is measured in: MACs, parameters, ONNX Runtime latency.

MACs come from slimkit's counter; latency from the project's one verified ONNX exporter and
ONNX Runtime session builder (slimkit.deploy.onnx_export), timed interleaved.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from slimkit.utils.modes import eval_mode

__all__ = ["count_macs", "count_params", "ort_runner", "ort_latency_ms"]


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward at batch 1 (slimkit's counter: conv, linear, matmul and
    attention multiply-accumulates, each counted once; elementwise work is not MACs)."""
    from slimkit.profile.counter import count_macs as project_count

    with torch.no_grad(), eval_mode(model):  # in train mode BN fails at batch 1 and its statistics would move
        return int(project_count(model, example_inputs[:1]).total)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ort_runner(model: nn.Module, example_inputs: torch.Tensor, threads: int = 1) -> Callable[[], object]:
    """A zero-argument callable running `model` once on ONNX Runtime at batch 1 (for measure_interleaved)."""
    from slimkit.deploy.onnx_export import export_onnx, ort_session

    x = example_inputs[:1]
    with tempfile.TemporaryDirectory(prefix="slimkit-prune-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, tuple(x.shape[1:]), path, dynamic_batch=False)
        session = ort_session(path, threads)  # the session holds the graph: the file may go
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def ort_latency_ms(models: dict[str, nn.Module], example_inputs: torch.Tensor, threads: int = 1,
                   repetitions: int = 30, rounds: int = 5, min_time_s: float = 0.3) -> dict[str, dict]:
    """Median/IQR latency in ms of each model on ONNX Runtime, measured interleaved."""
    from slimkit.profile.timing import measure_interleaved

    runners = {name: ort_runner(m, example_inputs, threads) for name, m in models.items()}
    timings = measure_interleaved(runners, warmup=3, repetitions=repetitions, rounds=rounds, min_time_s=min_time_s)
    return {name: t.to_dict() for name, t in timings.items()}
