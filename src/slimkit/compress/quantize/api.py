"""`quantize(model, config) -> QuantizedModel`: one verb for static int8 (PTQ), QAT and codebook compression.

The config's type picks the technique (torchao style): PTQConfig, QATConfig or CodebookConfig,
each handled by a quantizer registered under its `kind`. The model given is never changed.

    q = quantize(model, PTQConfig(max_drop=1.0), data=bundle, out_dir="q")      # int8 ONNX, verified
    q = quantize(model, QATConfig(epochs=2), data=bundle, out_dir="qat")        # fake-quant training
    q = quantize(model, CodebookConfig(bits=4), data=bundle, out_dir="cb")      # 4-bit weight codebooks

`data` is a DataBundle (calibration/training images from its train split, accuracy on its val
split), a QuantData (PTQ) or (inputs, labels) tensors (QAT, codebook).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from slimkit.compress.quantize.config import CodebookConfig, PTQConfig, QATConfig, load_config
from slimkit.compress.quantize.registry import QUANTIZERS, register_quantizer
from slimkit.errors import BadInputError

__all__ = ["QuantizedModel", "quantize", "quantize_with_ptq", "quantize_with_qat", "quantize_with_codebook"]

log = logging.getLogger(__name__)
QuantConfig = PTQConfig | QATConfig | CodebookConfig


@dataclass
class QuantizedModel:
    """What quantize() produced: the deployable file(s), a torch model, and the report (also report.json)."""

    kind: str  # ptq | qat | codebook
    model: nn.Module  # ptq: the float model; qat: the fake-quant model; codebook: the decoded model
    report: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # role -> path: int8_onnx, fp32_onnx, codebook

    @property
    def onnx_path(self) -> Path | None:
        return self.files.get("int8_onnx")


def quantize(model: nn.Module, config: QuantConfig | dict | str | Path | None = None, *, data: Any = None,
             input_size: Sequence[int] | None = None, out_dir: str | Path | None = None,
             teacher: nn.Module | None = None, seed: int = 0, **options: Any) -> QuantizedModel:
    """Quantize `model` (unchanged) as `config` says (default: PTQConfig()); returns a new QuantizedModel.

    `out_dir` receives the files (a fresh temporary directory when None); `teacher` is the
    float model QAT distils from (default: `model`); `options` go to the technique (PTQ:
    tune, latency, final_latency, progress, extra_report).
    """
    if config is None:
        config = PTQConfig()
    elif not isinstance(config, (PTQConfig, QATConfig, CodebookConfig)):
        config = load_config(config)
    size = _input_size(input_size, data)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"slimkit-{config.kind}-")) / "out"
    handler = QUANTIZERS.get(config.kind)
    return handler(model, config, data=data, input_size=size, out_dir=out, teacher=teacher, seed=seed, **options)


def _input_size(input_size: Sequence[int] | None, data: Any) -> tuple[int, int, int]:
    if input_size is not None:
        return tuple(int(v) for v in input_size)
    if getattr(data, "input_size", None) is not None:
        return tuple(data.input_size)
    if getattr(data, "calib_x", None) is not None:
        return tuple(data.calib_x.shape[1:])
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return tuple(data[0].shape[1:])
    raise BadInputError("quantize needs the input size: pass input_size=(C, H, W) or data that carries it")


def _labelled(data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(inputs, labels) of a split: a DataBundle's split, or given tensors (the train split only)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return (data[0], data[1]) if split == "train" else None
    dataset = getattr(data, split, None)
    if dataset is not None and hasattr(dataset, "tensors"):
        return dataset.tensors()
    return None


def _quant_data(data: Any, config: PTQConfig):
    from slimkit.compress.quantize.calib import QuantData

    if isinstance(data, QuantData):
        return data
    train, val = _labelled(data, "train"), _labelled(data, "val")
    if train is None or val is None:
        raise BadInputError("PTQ needs calibration and validation images: a DataBundle, QuantData or (x, y) tensors")
    return QuantData(getattr(data, "name", "tensors"), train[0][: config.calib_samples].numpy(), val[0].numpy(),
                     val[1].numpy())


@register_quantizer("ptq")
def quantize_with_ptq(model: nn.Module, config: PTQConfig, *, data: Any, input_size, out_dir: Path,
                      teacher=None, seed: int = 0, **options: Any) -> QuantizedModel:
    """Static QDQ int8 for ONNX Runtime: verified export, accuracy limit, speed guard (quantize_ptq)."""
    from slimkit.compress.quantize.pipeline import quantize_ptq

    report = quantize_ptq(model, input_size, _quant_data(data, config), config, out_dir, **options)
    return QuantizedModel("ptq", model, report, out_dir,
                          {"fp32_onnx": out_dir / "model.onnx", "int8_onnx": out_dir / "model.int8.onnx"})


def _accuracy_pair(float_model: nn.Module, new_model: nn.Module, val) -> dict[str, Any] | None:
    """Top-1 (%) of the float model and the compressed torch model on the val images."""
    if val is None:
        return None
    from slimkit.engine import evaluate

    dataset = torch.utils.data.TensorDataset(*val)
    fp32, new = evaluate(float_model, dataset)["top1"] * 100, evaluate(new_model, dataset)["top1"] * 100
    return {"fp32": fp32, "quantized": new, "drop": fp32 - new, "val_samples": len(val[1])}


@register_quantizer("qat")
def quantize_with_qat(model: nn.Module, config: QATConfig, *, data: Any, input_size, out_dir: Path,
                      teacher: nn.Module | None = None, seed: int = 0, **_: Any) -> QuantizedModel:
    """Fake-quant training through engine.fit (distilling from the float model), exported as int8 QDQ ONNX."""
    from slimkit.compress.quantize.int8_format import choose_format
    from slimkit.compress.quantize.ort_eval import accuracy
    from slimkit.compress.quantize.qat import export_qat_onnx, prepare_qat, qat_finetune
    from slimkit.profile.profiler import _environment
    from slimkit.utils.io import atomic_dir, atomic_write_json

    train = _labelled(data, "train")
    if train is None:
        raise BadInputError("QAT trains: pass data (a DataBundle or (inputs, labels) tensors)")
    fmt = choose_format(config.target_cpu, config.weight_format)
    qmodel = prepare_qat(model, config)
    history = qat_finetune(qmodel, train[0], train[1], config, teacher=teacher or model, seed=seed)
    val = _labelled(data, "val")
    with atomic_dir(out_dir) as tmp:
        export = export_qat_onnx(qmodel, input_size, tmp / "model.int8.onnx", fmt=fmt, check_inputs=train[0][:8])
        acc = _accuracy_pair(model, qmodel, val)
        if acc is not None:
            acc["int8_onnxruntime"] = accuracy(tmp / "model.int8.onnx", val[0].numpy(), val[1].numpy())
        report = {"format": "slimkit-quantize", "kind": "qat", "version": 1, "input_size": list(input_size),
                  "config": config.model_dump(), "history": history, "accuracy": acc, "export": export.to_dict(),
                  "int8_format": fmt.to_dict(),
                  "warnings": [w for w in [(export.int8_check or {}).get("warning")] if w],
                  "environment": _environment(torch.get_num_threads()),
                  "size_bytes": {"int8": (tmp / "model.int8.onnx").stat().st_size}}
        atomic_write_json(tmp / "report.json", report)
    return QuantizedModel("qat", qmodel, report, out_dir, {"int8_onnx": out_dir / "model.int8.onnx"})


@register_quantizer("codebook")
def quantize_with_codebook(model: nn.Module, config: CodebookConfig, *, data: Any, input_size, out_dir: Path,
                           teacher=None, seed: int = 0, **_: Any) -> QuantizedModel:
    """Weight-only codebooks with learnable centroids (JLCM); stored bit-packed in safetensors."""
    from safetensors.torch import save as save_tensors

    from slimkit.compress.quantize.codebook import codebook_compress, save_codebook
    from slimkit.utils.io import atomic_dir, atomic_write_json

    train = _labelled(data, "train") if data is not None else None
    if config.epochs > 0 and train is None:
        raise BadInputError("codebook fine-tuning (epochs > 0) needs data")
    result = codebook_compress(model, config, *(train or (None, None)), seed=seed)
    fp32_bytes = len(save_tensors({k: v.contiguous() for k, v in model.state_dict().items()}))
    with atomic_dir(out_dir) as tmp:
        path = save_codebook(result, tmp / "model.codebook.safetensors")
        report = {"format": "slimkit-quantize", "kind": "codebook", "version": 1, "input_size": list(input_size),
                  "config": config.model_dump(), "bits": result.bits, "layers": sorted(result.codes),
                  "history": result.history, "accuracy": _accuracy_pair(model, result.model, _labelled(data, "val")),
                  "size_bytes": {"fp32_safetensors": fp32_bytes, "codebook": path.stat().st_size}}
        atomic_write_json(tmp / "report.json", report)
    return QuantizedModel("codebook", result.model, report, out_dir,
                          {"codebook": out_dir / "model.codebook.safetensors"})
