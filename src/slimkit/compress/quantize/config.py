"""Versioned, validated quantization configs that round-trip through JSON/YAML (the CLI reads the same files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimkit.errors import BadInputError

__all__ = ["PTQConfig", "QATConfig", "CodebookConfig", "load_config", "CALIB_METHODS"]

CALIB_METHODS = ("minmax", "percentile", "entropy")
Switch = Literal["auto", "on", "off"]
TargetCpu = Literal["auto", "x86-vnni", "x86-avx2", "arm64"]  # see slimkit.utils.cpu
WeightFormat = Literal["auto", "s8", "s7"]  # auto: s7 where the target can saturate (x86 without VNNI)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(), sort_keys=False)


class PTQConfig(_Config):
    """Static QDQ int8 post-training quantization in ONNX Runtime."""

    kind: Literal["ptq"] = "ptq"
    version: Literal[1] = 1
    method: Literal["minmax", "percentile", "entropy"] = "minmax"
    per_channel: bool = True  # per-output-channel weight scales
    symmetric_activations: bool = False  # False: uint8 asymmetric (the x86 U8S8 fast path)
    percentile: float = Field(99.999, gt=50.0, le=100.0)
    calib_samples: int = Field(256, ge=1)
    equalize: Switch = "auto"  # cross-layer equalization; auto: on for models with depthwise convs
    # How equalization treats ReLU6: "skip" keeps ORT's fused Conv+Clip (measured: "clip" cost mobilenet_v2
    # int8 from 1.79x to 0.72x of fp32 speed at 224x224), "clip" is exact, "relu" is the paper's approximation.
    relu6: Literal["skip", "clip", "relu"] = "skip"
    bias_correction: Switch = "auto"  # auto: on for models with depthwise convs
    max_drop: float | None = Field(1.0, ge=0.0)  # points of top-1; None: no accuracy-driven fallback
    speed_guard: bool = True
    export_atol: float = Field(1e-4, gt=0.0, le=0.1)  # fp32 export parity tolerance, relative to max(1, output scale)
    exclude: list[str] = Field(default_factory=list)  # ONNX node names kept in float by the user
    target_cpu: TargetCpu = "auto"  # the CPU the model ships to (auto: this machine)
    weight_format: WeightFormat = "auto"


class QATConfig(_Config):
    """Fake-quant training: per-channel int8 weights, uint8 activations with observed or learned ranges."""

    kind: Literal["qat"] = "qat"
    version: Literal[1] = 1
    activation_range: Literal["observed", "learned"] = "learned"
    ema_decay: float = Field(0.9, gt=0.0, lt=1.0)
    epochs: int = Field(2, ge=0)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(64, ge=1)
    distill_alpha: float = Field(0.0, ge=0.0, le=1.0)  # weight of the KD loss from the float teacher
    temperature: float = Field(4.0, gt=0.0)
    target_cpu: TargetCpu = "auto"
    weight_format: WeightFormat = "auto"


class CodebookConfig(_Config):
    """Weight-only compression: k-means codebooks per layer (per channel group) with learnable centroids."""

    kind: Literal["codebook"] = "codebook"
    version: Literal[1] = 1
    bits: int = Field(4, ge=1, le=8)  # 2**bits centroids per codebook
    groups: int = Field(1, ge=1, le=256)  # channel groups with their own codebook
    min_params: int = Field(256, ge=1)  # smaller layers stay float
    kmeans_iters: int = Field(20, ge=1)
    epochs: int = Field(0, ge=0)  # fine-tuning epochs of centroids and mappings
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(64, ge=1)


_KINDS = {"ptq": PTQConfig, "qat": QATConfig, "codebook": CodebookConfig}


def load_config(source: str | Path | dict) -> PTQConfig | QATConfig | CodebookConfig:
    """Read a config from a dict or a .json/.yaml file (BadInputError on malformed input)."""
    data = source
    if not isinstance(source, dict):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BadInputError(f"cannot read config {path}: {exc}") from exc
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml and json raise different error types
            raise BadInputError(f"malformed config {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise BadInputError(f"config needs a 'kind' of {', '.join(_KINDS)}")
    try:
        return _KINDS[data["kind"]].model_validate(data)
    except ValidationError as exc:
        raise BadInputError(f"invalid {data['kind']} config: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
