"""`profile()`: exact MACs, params, size, peak activation memory and measured latency of one model."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn

from slimkit.errors import BadInputError
from slimkit.utils.parse import parse_input_size

__all__ = ["Profile", "LayerRow", "profile", "DOWNLOAD_MBIT_S"]

# Typical sustained mobile download rates (Mbit/s) assumed for the download-time figure.
DOWNLOAD_MBIT_S = {"4g": 20.0, "5g": 100.0}


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int] | None
    params: int
    macs: int
    percent: float
    calls: int


@dataclass
class Profile:
    """Everything `slimkit profile` reports; `.to_dict()` is the JSON written by `--json`."""

    model: str
    input_size: tuple[int, int, int]
    batch: int
    params: int
    trainable_params: int
    macs: int
    macs_by_type: dict[str, int]
    macs_by_op: dict[str, int]
    elementwise_ops: int
    elementwise_by_op: dict[str, int]
    peak_activation_bytes: int
    peak_activation_bytes_measured: int | None
    size_bytes: dict[str, int]
    download_s: dict[str, float]
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_errors: dict[str, str] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRow] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size_bytes(model: nn.Module) -> dict[str, int]:
    """fp32 bytes of the unique state tensors, and an int8 estimate (weights 1 B + fp32 per-channel scales)."""
    seen, fp32, int8 = set(), 0, 0
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        nbytes = t.numel() * (4 if t.is_floating_point() else t.element_size())
        fp32 += nbytes
        is_weight = t.is_floating_point() and t.dim() >= 2 and name.endswith("weight")
        int8 += t.numel() + 4 * t.shape[0] if is_weight else nbytes
    return {"fp32": fp32, "int8_estimate": int8}


def _download_s(size: int) -> dict[str, float]:
    return {net: size * 8 / (rate * 1e6) for net, rate in DOWNLOAD_MBIT_S.items()}


def _layer_rows(model: nn.Module, count) -> list[LayerRow]:
    total = max(count.total, 1)
    rows = []
    for name, module in model.named_modules():
        self_macs = count.self_by_module.get(name, 0)
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        is_leaf = next(module.children(), None) is None
        if self_macs == 0 and not (is_leaf and own_params):
            continue
        rows.append(
            LayerRow(name or "(root)", type(module).__name__, count.output_shapes.get(name), own_params,
                     self_macs, 100.0 * self_macs / total, count.module_calls.get(name, 0))
        )
    return rows


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torchvision

    from slimkit.utils.cpu import int8_path

    return {
        "cpu": _cpu_name(),
        "int8_path": int8_path(),  # x86-vnni | x86-avx2 (int8 pair sums can saturate) | arm64-dotprod | arm64
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _resolve(model_or_name: nn.Module | str, input_size, num_classes, pretrained) -> tuple[nn.Module, str, tuple]:
    if isinstance(model_or_name, nn.Module):
        size = parse_input_size(input_size) or tuple(getattr(model_or_name, "input_size", (3, 224, 224)))
        return model_or_name, type(model_or_name).__name__, size
    from slimkit.models import load_model

    model, info = load_model(str(model_or_name), num_classes=num_classes, pretrained=pretrained, trust_code=True)
    return model, info.spec, parse_input_size(input_size) or tuple(info.input_size)


def profile(
    model_or_name: nn.Module | str,
    input_size: str | tuple[int, int, int] | None = None,
    latency: bool = True,
    *,
    batch: int = 1,
    onnxruntime: bool = True,
    threads: int | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    measure_memory: bool = True,
    repetitions: int = 50,
    ceiling: bool = True,
    runtimes: Sequence[str] = (),
) -> Profile:
    """Profile a model (left unchanged) at batch `batch` and `input_size` (default: the model's own).

    `runtimes`: deploy runtimes (openvino, tflite, executorch) timed besides PyTorch and ONNX Runtime,
    interleaved in the same run, each on an artifact checked against the model.
    """
    from slimkit.profile.counter import count_macs

    if batch < 1:
        raise BadInputError(f"batch must be >= 1, got {batch}")
    model, label, size = _resolve(model_or_name, input_size, num_classes, pretrained)
    was_training = model.training
    model.eval()
    example = torch.randn(batch, *size)
    try:
        count = count_macs(model, example)
    except Exception as exc:
        raise BadInputError(f"{label} fails forward at input size {'x'.join(map(str, size))}: {exc}") from exc
    threads = threads or torch.get_num_threads()
    params = sum(p.numel() for p in model.parameters())
    size_bytes = _size_bytes(model)
    result = Profile(
        model=label, input_size=size, batch=batch, params=params,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=count.total, macs_by_type=count.by_category, macs_by_op=count.by_op,
        elementwise_ops=count.elementwise_total, elementwise_by_op=count.elementwise,
        peak_activation_bytes=count.peak_activation_bytes,
        peak_activation_bytes_measured=measure_peak_activation_bytes(model, example) if measure_memory else None,
        size_bytes=size_bytes, download_s=_download_s(size_bytes["fp32"]),
        layers=_layer_rows(model, count), environment=_environment(threads),
    )
    if latency:
        _add_latency(result, model, example, threads, onnxruntime, repetitions, ceiling, runtimes)
    model.train(was_training)
    return result


def measure_peak_activation_bytes(model: nn.Module, example: torch.Tensor) -> int | None:
    from slimkit.profile.memory import measure_peak_activation_bytes as measure

    return measure(model, example)


def _add_latency(result: Profile, model: nn.Module, example, threads: int, onnxruntime: bool, reps: int,
                 with_ceiling: bool, runtimes: Sequence[str] = ()) -> None:
    from slimkit.profile.latency import matmul_ceiling_gmacs, measure_latency

    timings, errors = measure_latency(model, example, threads=threads, onnxruntime=onnxruntime, runtimes=runtimes,
                                      repetitions=reps, min_time_s=1.0 if with_ceiling else 0.3)
    ceiling = matmul_ceiling_gmacs(threads) if with_ceiling else None
    result.latency_ms = {name: t.to_dict() for name, t in timings.items()}
    result.latency_errors = errors
    result.throughput = {"matmul_ceiling_gmacs": ceiling, "threads": threads}
    for name, t in timings.items():
        achieved = result.macs / (t.median / 1e3) / 1e9
        result.throughput[name] = {"gmacs_per_s": achieved, "fraction_of_peak": achieved / ceiling if ceiling else None}
