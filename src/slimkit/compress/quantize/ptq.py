"""Static QDQ int8 post-training quantization with ONNX Runtime (per-channel weights; minmax/percentile/entropy).

`Int8Builder` makes many int8 variants of one fp32 model (different exclusions, granularity, schemes)
cheaply: each calibration (method x range options) runs once and is reused from ORT's calibration cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from slimkit.compress.quantize.calib import TensorReader
from slimkit.compress.quantize.ort_eval import quiet
from slimkit.errors import BadInputError

__all__ = ["QuantSettings", "Int8Builder", "prepare_fp32", "calibrate", "quantize_static_qdq"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantSettings:
    """One int8 variant: calibration, weight granularity, activation scheme, and which nodes stay float."""

    method: str = "minmax"  # minmax | percentile | entropy
    per_channel: bool = True
    symmetric_activations: bool = False  # True: int8 symmetric; False: uint8 asymmetric
    percentile: float = 99.999
    exclude: frozenset[str] = field(default_factory=frozenset)  # node names kept float
    only: frozenset[str] = field(default_factory=frozenset)  # if set: quantize just these nodes
    weights: str = "s8"  # s8 | s7: 7-bit weights for x86 without VNNI (see int8_format)

    def with_exclude(self, names: Iterable[str]) -> "QuantSettings":
        return replace(self, exclude=frozenset(self.exclude) | frozenset(names))

    def key(self) -> str:
        data = asdict(self)
        data["exclude"], data["only"] = sorted(self.exclude), sorted(self.only)
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def calib_key(self) -> str:
        """Ranges depend only on the method (and percentile); the scheme is applied when quantizing."""
        return f"{self.method}-{self.percentile}" if self.method == "percentile" else self.method

    def describe(self) -> dict:
        return {"method": self.method, "per_channel": self.per_channel,
                "symmetric_activations": self.symmetric_activations, "excluded": len(self.exclude),
                "weights": self.weights}


def _ort_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if name not in methods:
        raise BadInputError(f"unknown calibration method {name!r}; choose minmax, percentile or entropy")
    return methods[name]


def prepare_fp32(src: str | Path, dst: str | Path) -> Path:
    """ORT's recommended pre-processing (graph optimisation + shape inference); a plain copy if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing is an optimisation, never a reason to fail
        log.info("quant_pre_process failed (%s); quantizing the exported graph as is", exc)
        shutil.copyfile(src, dst)
    _name_nodes(Path(dst))
    return Path(dst)


def _name_nodes(path: Path) -> None:
    """Give unnamed nodes (ORT inlines HardSwish into nameless HardSigmoid + Mul) their output tensor's name.

    Quantization excludes nodes by name and the op profiler charges time by name: a nameless node could
    neither be kept float nor priced. Tensor names are unique, and ORT's Q/DQ names start with them.
    """
    import onnx

    model = onnx.load(str(path))
    unnamed = [n for n in model.graph.node if not n.name and n.output]
    if unnamed:
        for n in unnamed:
            n.name = n.output[0]
        onnx.save(model, str(path))


# ORT's quantize_static cannot pass histogram sizes, and its entropy defaults (128 bins, 128 quantized
# bins) leave a single candidate threshold: entropy calibration silently becomes min/max. slimkit runs
# the calibrator itself and hands ORT the ranges. Entropy uses 512 bins searched down to 128 (thresholds
# from 25% of the max up): TensorRT's 2048 bins cost ~7x more time in ORT's pure-Python KL search.
_CALIB_OPTIONS = {"minmax": {}, "percentile": {"num_bins": 2048}, "entropy": {"num_bins": 512, "num_quantized_bins": 128}}


def calibrate(fp32_path: str | Path, calib_x: np.ndarray, settings: QuantSettings, cache_path: str | Path) -> Path:
    """Collect activation ranges for `settings.method` on `calib_x` into ORT's calibration cache file."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options = dict(_CALIB_OPTIONS[settings.method])
    if settings.method == "percentile":
        options["percentile"] = settings.percentile
    with tempfile.TemporaryDirectory(prefix="slimkit-calib-") as tmp, quiet():
        calibrator = create_calibrator(
            Path(fp32_path), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=_ort_method(settings.method),
            extra_options=options,
        )
        calibrator.collect_data(TensorReader(calib_x))
        save_tensors_data(calibrator.compute_data(), cache_path)
        del calibrator
    return Path(cache_path)


def quantize_static_qdq(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_x: np.ndarray | None,
    settings: QuantSettings,
    *,
    cache_path: str | Path | None = None,
) -> Path:
    """Write a QDQ int8 model of `fp32_path` to `out_path` (weights int8 or 7-bit, activations (u)int8)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    act = QuantType.QInt8 if settings.symmetric_activations else QuantType.QUInt8
    extra = {"ActivationSymmetric": settings.symmetric_activations, "WeightSymmetric": True}
    if cache_path is None or not Path(cache_path).exists():
        if calib_x is None:
            raise BadInputError("static quantization needs calibration images")
        cache_path = calibrate(fp32_path, calib_x, settings, cache_path or Path(out_path).with_suffix(".calib.json"))
    with quiet():
        quantize_static(
            str(fp32_path), str(out_path), None, quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            activation_type=act, weight_type=QuantType.QInt8, calibrate_method=_ort_method(settings.method),
            nodes_to_exclude=sorted(settings.exclude), nodes_to_quantize=sorted(settings.only),
            reduce_range=settings.weights == "s7", extra_options=extra, calibration_cache_path=str(cache_path),
        )
    return Path(out_path)


class Int8Builder:
    """Builds (and caches) int8 variants of one prepared fp32 ONNX model in `workdir`."""

    def __init__(self, fp32_path: str | Path, calib_x: np.ndarray, workdir: str | Path):
        self.fp32_path = Path(fp32_path)
        self.calib_x = calib_x
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(self.fp32_path.read_bytes())
        digest.update(np.ascontiguousarray(calib_x, dtype=np.float32).tobytes())
        self._tag = digest.hexdigest()[:12]
        self.builds = 0

    def build(self, settings: QuantSettings) -> Path:
        out = self.workdir / f"int8-{self._tag}-{settings.key()}.onnx"
        if out.exists():
            return out
        cache = self.workdir / f"calib-{self._tag}-{settings.calib_key()}.json"
        tmp = out.with_suffix(".tmp.onnx")
        quantize_static_qdq(self.fp32_path, tmp, self.calib_x, settings, cache_path=cache)
        tmp.replace(out)
        self.builds += 1
        return out
