"""The `slimkit quantize` flow: export fp32 -> PyTorch-side fixes -> int8 QDQ -> accuracy fallback -> speed guard.

Writes model.onnx (fp32, verified against PyTorch), model.int8.onnx and report.json into a directory
that appears only when everything succeeded.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from slimkit.compress.quantize.calib import QuantData
from slimkit.compress.quantize.config import PTQConfig
from slimkit.compress.quantize.graph import OnnxGraph
from slimkit.compress.quantize.int8_format import choose_format
from slimkit.compress.quantize.ort_eval import accuracy
from slimkit.compress.quantize.ptq import Int8Builder, QuantSettings, prepare_fp32
from slimkit.compress.quantize.op_profile import OrtOpProfiler
from slimkit.compress.quantize.speed_guard import (LatencyFn, OrtLatency, SpeedGuardResult, final_check, fused_closure,
                                                   speed_groups, speed_guard, block_groups)
from slimkit.utils.io import atomic_dir, atomic_write_json

__all__ = ["quantize_ptq", "has_depthwise"]

EQUALIZED_ATOL_FACTOR = 10.0  # fp32 export tolerance of a cross-layer-equalized source, times export_atol

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def has_depthwise(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


class _Sources:
    """Prepared fp32 ONNX sources for int8, one per weight granularity (bias correction depends on it)."""

    def __init__(self, model: nn.Module, input_size, data: QuantData, config: PTQConfig, work: Path):
        self.model, self.input_size, self.data, self.work = model, tuple(input_size), data, work
        depthwise = has_depthwise(model)
        self.equalize = _switch(config.equalize, depthwise)
        self.bias_correction = _switch(config.bias_correction, depthwise)
        self.relu6, self.export_atol = config.relu6, config.export_atol
        self.check_inputs = torch.from_numpy(data.calib_x[:2]) if len(data.calib_x) >= 2 else None
        self.builders: dict[bool, Int8Builder] = {}
        self.notes: dict = {"depthwise": depthwise, "equalize": None, "bias_correction": None}

    def builder(self, per_channel: bool) -> Int8Builder:
        if per_channel not in self.builders:
            self.builders[per_channel] = Int8Builder(self._source(per_channel), self.data.calib_x, self.work)
        return self.builders[per_channel]

    def build(self, settings: QuantSettings) -> Path:
        return self.builder(settings.per_channel).build(settings)

    def _source(self, per_channel: bool) -> Path:
        from slimkit.compress.quantize.bias_correction import correct_bias_
        from slimkit.compress.quantize.equalize import equalize_
        from slimkit.deploy.onnx_export import export_onnx

        net = copy.deepcopy(self.model).eval()
        if self.equalize:
            rep = equalize_(net, relu6=self.relu6)
            self.notes["equalize"] = {"pairs": len(rep.pairs), "skipped": len(rep.skipped), "folded_bn": rep.folded,
                                      "sweeps": rep.iterations, "relu6": self.relu6, "method": "cross-layer equalization",
                                      "applied": rep.applied, "error": rep.error}
        if self.bias_correction:
            rep = correct_bias_(net, torch.from_numpy(self.data.calib_x), per_channel=per_channel)
            self.notes["bias_correction"] = {"layers": rep.layers, "per_channel": per_channel,
                                             "method": "empirical (weight rounding mean shift on calibration images)"}
        tag = "pc" if per_channel else "pt"
        # Equalization moves magnitude between layers, so intermediates (and their fp32 rounding) grow where the
        # output does not: mobilenet_v2 at 224 measured 1.08e-4 of its output scale on an AVX-512 machine, over
        # the 1e-4 that fits unequalized models. A broken export errs by O(1); the int8 model built from this
        # source is then checked exactly against integer arithmetic.
        atol = self.export_atol * (EQUALIZED_ATOL_FACTOR if self.equalize else 1.0)
        export_onnx(net, self.input_size, self.work / f"src-{tag}.onnx", check_inputs=self.check_inputs, atol=atol)
        return prepare_fp32(self.work / f"src-{tag}.onnx", self.work / f"pre-{tag}.onnx")


def quantize_ptq(
    model: nn.Module,
    input_size,
    data: QuantData,
    config: PTQConfig,
    out_dir: str | Path,
    *,
    tune: bool = False,
    latency: LatencyFn | None = None,
    final_latency: LatencyFn | None = None,
    progress: Progress | None = None,
    extra_report: dict | None = None,
) -> dict:
    """Quantize `model` (unchanged) to int8 ONNX in `out_dir`; returns the report (also in report.json)."""
    from slimkit.deploy.onnx_export import export_onnx

    say = progress or (lambda msg: log.info(msg))
    latency = latency or OrtLatency(input_size, repetitions=40, rounds=8, min_time_s=0.5)
    final_latency = final_latency or latency
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        work = tmp / ".work"
        work.mkdir()
        say("exporting fp32 (verified against PyTorch)")
        # Representative images for the parity check: random noise can push a trained model far out of range.
        check = torch.from_numpy(data.calib_x[:2]) if len(data.calib_x) >= 2 else None
        fp32_report = export_onnx(model, input_size, tmp / "model.onnx", check_inputs=check, atol=config.export_atol)
        fp32_path = tmp / "model.onnx"
        sources = _Sources(model, input_size, data, config, work)
        fmt = choose_format(config.target_cpu, config.weight_format)
        settings = QuantSettings(config.method, config.per_channel, config.symmetric_activations, config.percentile,
                                 frozenset(config.exclude), weights=fmt.weights)
        float_nodes = {n: "user: --exclude" for n in config.exclude}
        evaluate = (lambda p: accuracy(p, data.val_x, data.val_y)) if data.labelled else None
        say("calibrating and quantizing to int8 (QDQ)")
        sources.build(settings)
        acc = {"fp32": evaluate(fp32_path)} if evaluate else None
        extra: dict = {}
        if tune:
            settings, extra["tune"] = _tune(sources, settings, data, acc, config, fp32_path, latency, say)
        elif evaluate and config.max_drop is not None:
            settings, extra["sensitivity"] = _mixed_precision(sources, settings, data, acc, config, say)
        for node in extra.get("sensitivity", {}).get("float_layers", []):
            float_nodes[node] = "accuracy: among the most sensitive layers under --max-drop"
        for node in extra.get("tune", {}).get("float_layers", []):
            float_nodes[node] = "accuracy: tuner kept the most sensitive layers float"
        if config.speed_guard:
            say("speed guard: timing fp32 and int8 variants interleaved")
            graph_path = sources.builder(settings.per_channel).fp32_path
            graph = OnnxGraph(graph_path)
            sources.notes["onnx_shape_inference"] = graph.shape_error or "ok"
            groups = {k: fused_closure(graph, v) for k, v in speed_groups(graph).items()}
            profiler = OrtOpProfiler(input_size, [n.name for n in graph.nodes], threads=conditions_threads(latency))
            guard = speed_guard(sources.build, fp32_path, settings, groups, latency, final_latency=final_latency,
                                profiler=profiler, profile_fp32=graph_path, blocks=block_groups(graph))
            if evaluate and config.max_drop is not None and guard.settings != settings:
                guard = _accuracy_gate(guard, settings, sources, fp32_path, evaluate, acc["fp32"], config.max_drop,
                                       final_latency, say)
            settings = guard.settings
            float_nodes.update(guard.float_nodes)
        else:
            say("final timing: fp32 vs int8, interleaved")
            guard = final_check(final_latency, fp32_path, SpeedGuardResult(settings, sources.build(settings)))
        shutil.copyfile(guard.path, tmp / "model.int8.onnx")
        say("exact int8 check: ONNX Runtime's int8 ops against int32 arithmetic")
        extra["int8_check"] = _exact_check(tmp / "model.int8.onnx", data, fmt)
        if acc is not None:
            acc["int8"] = evaluate(tmp / "model.int8.onnx")
        fp32_report.path = str(out_dir / "model.onnx")
        extra["int8_format"] = fmt.to_dict()
        report = _report(input_size, data, config, fp32_report, sources, settings, float_nodes, acc, guard,
                         final_latency, tmp, extra)
        report.update(extra_report or {})
        atomic_write_json(tmp / "report.json", report)
        shutil.rmtree(work, ignore_errors=True)
    return report


def _accuracy_gate(guard: SpeedGuardResult, checked: QuantSettings, sources, fp32_path, evaluate, fp32_top1: float,
                   max_drop: float, latency, say) -> SpeedGuardResult:
    """The guard's faster mixed model, unless it breaks --max-drop by more than the accuracy-checked one does.

    Keeping blocks float moves the Quantize/DequantizeLinear pairs to new tensors with their own ranges, so a
    mixed model can lose accuracy that the checked all-int8 model did not (EfficientNet-B0 on the x86-avx2
    path: 0.40 points all-int8, 1.35 with the faster blocks float). Speed never buys a broken accuracy budget.
    """
    mixed_drop = fp32_top1 - evaluate(guard.path)
    if mixed_drop <= max_drop:
        return guard
    checked_path = sources.build(checked)
    checked_drop = fp32_top1 - evaluate(checked_path)
    gate = {"mixed_drop": mixed_drop, "checked_drop": checked_drop, "max_drop": max_drop,
            "rejected_float_nodes": len(guard.float_nodes)}
    if checked_drop >= mixed_drop:  # neither meets the budget: keep the one that loses less
        guard.accuracy_gate = {**gate, "kept": "mixed"}
        return guard
    say(f"speed guard's mixed model drops {mixed_drop:.2f} points > {max_drop}: keeping the accuracy-checked model")
    fallback = final_check(latency, fp32_path, SpeedGuardResult(checked, checked_path, trials=guard.trials,
                                                                profile=guard.profile))
    fallback.accuracy_gate = {**gate, "kept": "checked"}
    return fallback


def conditions_threads(latency) -> int:
    """The thread count the latency figures use, so op profiles match them (1 when the timer does not say)."""
    return int(getattr(latency, "threads", 1) or 1)


def _exact_check(path: Path, data: QuantData, fmt) -> dict:
    """The int8 model's ops against exact int32 arithmetic on calibration images (Int8CheckError if saturated)."""
    from slimkit.compress.quantize.int8_check import enforce_exact, int8_exact_check

    check = int8_exact_check(path, data.calib_x[:8])
    return {**check.to_dict(), "warning": enforce_exact(check, fmt)}


def _mixed_precision(sources, settings, data, acc, config, say):
    from slimkit.compress.quantize.ort_eval import predict
    from slimkit.compress.quantize.sensitivity import keep_sensitive_float, layer_sensitivity

    drop = acc["fp32"] - accuracy(sources.build(settings), data.val_x, data.val_y)
    if drop <= config.max_drop:
        return settings, {"needed": False, "drop_all_int8": drop}
    say(f"int8 drops {drop:.2f} points > {config.max_drop}: per-layer sensitivity")
    src = sources.builder(settings.per_channel).fp32_path
    x = data.calib_x[:64]
    layers = [l.name for l in OnnxGraph(src).layers() if l.name not in settings.exclude]
    ranking = layer_sensitivity(sources.build, settings, layers, x, predict(src, x))
    result = keep_sensitive_float(sources.build, settings, [n for n, _ in ranking],
                                  lambda p: accuracy(p, data.val_x, data.val_y), acc["fp32"], config.max_drop)
    info = {"needed": True, "drop_all_int8": drop, "ranking": ranking, "float_layers": result.float_layers,
            "met": result.met, "evaluations": result.evaluations}
    return result.settings, info


def _tune(sources, settings, data, acc, config, fp32_path, latency, say):
    from slimkit.compress.quantize.ort_eval import predict
    from slimkit.compress.quantize.sensitivity import layer_sensitivity
    from slimkit.compress.quantize.tuner import TuneSpace, tune

    say("quantune: ranking layer sensitivity")
    src = sources.builder(settings.per_channel).fp32_path
    x = data.calib_x[:64]
    layers = [l.name for l in OnnxGraph(src).layers() if l.name not in settings.exclude]
    ranking = [n for n, _ in layer_sensitivity(sources.build, settings, layers, x, predict(src, x))]
    ks = tuple(k for k in (0, 1, 2, 4, 8) if k <= len(ranking))
    space = TuneSpace(float_layers=ks)

    def to_settings(c: dict) -> QuantSettings:
        return replace(settings, method=c["method"], per_channel=c["per_channel"],
                       symmetric_activations=c["symmetric_activations"]).with_exclude(ranking[: c["float_layers"]])

    def evaluate(c: dict) -> tuple[float, float]:
        path = sources.build(to_settings(c))
        t = latency({"fp32": fp32_path, "int8": path})
        quality = accuracy(path, data.val_x, data.val_y) if data.labelled else -_output_error(path, src, x)
        return quality, t["int8"].median / t["fp32"].median

    reference = acc["fp32"] if acc else 0.0
    max_drop = config.max_drop if (acc and config.max_drop is not None) else float("inf")
    say(f"quantune: searching {len(space.grid())} configs with a gradient-boosted-trees surrogate")
    result = tune(space, evaluate, reference, max_drop)
    info = result.to_dict()
    info["float_layers"] = ranking[: result.best.config["float_layers"]]
    info["objective"] = "accuracy: top-1 %" if data.labelled else "accuracy: minus relative output error (no labels)"
    info["latency"] = "int8 / fp32 median latency ratio, interleaved"
    return to_settings(result.best.config), info


def _output_error(path, src, x) -> float:
    import numpy as np

    from slimkit.compress.quantize.ort_eval import predict

    ref = predict(src, x)
    return float(np.mean((predict(path, x) - ref) ** 2) / max(float(np.mean(ref**2)), 1e-12))


def _report(input_size, data, config, fp32_report, sources, settings, float_nodes, acc, guard: SpeedGuardResult,
            latency, tmp, extra) -> dict:
    import onnx

    from slimkit.profile.profiler import _environment

    int8_graph = onnx.load(str(tmp / "model.int8.onnx"))
    ops = [n.op_type for n in int8_graph.graph.node]
    warnings = [w for w in (guard.warning, extra.get("int8_check", {}).get("warning")) if w]
    if acc is not None:
        acc["drop"] = acc["fp32"] - acc["int8"]
        acc.update(val_samples=len(data.val_x), max_drop=config.max_drop,
                   met=None if config.max_drop is None else acc["drop"] <= config.max_drop)
        if acc["met"] is False:
            warnings.append(f"WARNING: int8 accuracy drop {acc['drop']:.2f} exceeds --max-drop {config.max_drop}")
    conditions = latency.conditions() if hasattr(latency, "conditions") else {}
    return {
        "format": "slimkit-quantize", "version": 1,
        "input_size": list(input_size),
        "config": config.model_dump(),
        "settings": {**settings.describe(), "exclude": sorted(settings.exclude)},
        "data": {"source": data.name, "calib_samples": len(data.calib_x), "val_samples": len(data.val_x),
                 "labelled": data.labelled},
        "latency_ms": {"fp32": guard.fp32.median, "int8": guard.int8.median, "speedup": guard.speedup},
        "latency": {"fp32": guard.fp32.to_dict(), "int8": guard.int8.to_dict(), "conditions": conditions,
                    "note": "same run, interleaved; median with p90/iqr/min/max over `repetitions` calls"},
        "accuracy": acc,
        "size_bytes": {"fp32": (tmp / "model.onnx").stat().st_size, "int8": (tmp / "model.int8.onnx").stat().st_size},
        "float_nodes": float_nodes,
        "speed_guard": {**guard.to_dict(), "enabled": config.speed_guard},
        "slower_than_fp32": guard.slower_than_fp32,
        "quantized": {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")},
        "preprocess": sources.notes,
        "export": fp32_report.to_dict(),
        "warnings": warnings,
        "environment": _environment(conditions.get("threads", 1)),
        **extra,
    }
