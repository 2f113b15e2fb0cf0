"""The run's honest figures: every stage measured on ONNX Runtime in one interleaved run.

Each stage (the trained baseline, then the model after each step) is exported to ONNX
(int8 where a quantize step produced it); accuracy is measured on the val split with
ONNX Runtime, and latency by timing all stages in alternating rounds in the same run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimkit.utils.io import atomic_dir, atomic_write_json

__all__ = ["build_report", "REPORT_VERSION"]

REPORT_VERSION = 1


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def _stage(name: str, model: nn.Module, onnx_path: Path, ctx, tmp: Path, step_type: str) -> dict[str, Any]:
    from slimkit.deploy.onnx_export import export_onnx
    from slimkit.profile import count_macs

    if onnx_path is None:
        onnx_path = tmp / f"{name}.onnx"
        export_onnx(model, ctx.input_size, onnx_path)
    count = count_macs(model.eval(), torch.randn(1, *ctx.input_size))
    return {"name": name, "type": step_type, "onnx": str(onnx_path), "macs": count.total,
            "params": sum(p.numel() for p in model.parameters()), "size_bytes": onnx_path.stat().st_size,
            "_macs_by_module": count.self_by_module, "_widths": _widths(model)}


def _measure(stages: list[dict], ctx) -> dict[str, Any]:
    from slimkit.compress.quantize.ort_eval import accuracy
    from slimkit.deploy.onnx_export import ort_session
    from slimkit.profile.timing import measure_interleaved

    x, y = ctx.data.val.tensors()
    x_np, y_np = x.numpy().astype(np.float32), y.numpy()
    sessions = {s["name"]: ort_session(s["onnx"], ctx.threads) for s in stages}
    for s in stages:
        s["accuracy"] = accuracy(sessions[s["name"]], x_np, y_np)
    one = np.ascontiguousarray(x_np[:1])
    feed_name = {n: sess.get_inputs()[0].name for n, sess in sessions.items()}
    ctx.say(f"timing {len(stages)} models interleaved on ONNX Runtime ({ctx.threads} thread(s))")
    timings = measure_interleaved({n: (lambda s=sess, k=feed_name[n]: s.run(None, {k: one})) for n, sess in sessions.items()},
                                  warmup=10, repetitions=60, rounds=6, min_time_s=1.5)
    for s in stages:
        t = timings[s["name"]]
        s["latency_ms"] = t.median
        s["latency"] = t.to_dict()
    return {"runtime": "onnxruntime", "threads": ctx.threads, "batch": 1, "input_size": list(ctx.input_size),
            "repetitions": min(t.repetitions for t in timings.values()), "interleaved": True,
            "val_images": int(len(y_np))}


def _budget_section(ctx, baseline: dict, final: dict) -> dict[str, Any]:
    kind = {"size": "size_bytes", "latency": "latency_ms"}.get(ctx.budget.kind, ctx.budget.kind)
    limit = ctx.budget.limit(baseline[kind])
    return {"budget": str(ctx.budget), "budget_met": bool(final[kind] <= limit),
            "budget_detail": {"kind": ctx.budget.kind, "limit": limit, "baseline": baseline[kind], "final": final[kind],
                              "final_fraction": final[kind] / baseline[kind], "margin": (limit - final[kind]) / limit}}


def _layers(baseline: dict, final: dict) -> list[dict[str, Any]]:
    rows = []
    for name, width in baseline["_widths"].items():
        rows.append({"name": name, "width_before": width, "width_after": final["_widths"].get(name),
                     "macs_before": baseline["_macs_by_module"].get(name, 0),
                     "macs_after": final["_macs_by_module"].get(name, 0)})
    return rows


def _public(stage: dict) -> dict:
    return {k: v for k, v in stage.items() if not k.startswith("_")}


def _collect(ctx, recipe, tmp: Path) -> tuple[list[dict], list[dict]]:
    """The stages (baseline, then each step's model) and the cuts tried inside steps, ready to measure."""
    from slimkit.compress.curve import cut_stages

    stages, cuts = [_stage("baseline", ctx.original, None, ctx, tmp, "baseline")], []
    for index, step in enumerate(recipe.steps):
        name = f"{index:02d}-{step.label}"
        if step.type == "train":
            continue
        step_dir = ctx.out_dir / "steps" / name
        model = ctx.reload(step_dir / "model")
        meta = json.loads((step_dir / "step.json").read_text())
        onnx = step_dir / meta["onnx"] if meta.get("onnx") else None
        stage = _stage(name, model, onnx, ctx, tmp, step.type)
        stage["details"] = meta.get("details", {})
        stage["_model"] = model
        stages.append(stage)
        cuts += cut_stages(ctx, step_dir, name, stage["details"], _stage, tmp)
    return stages, cuts


def _write_final(ctx, final: dict, stages: list[dict]) -> dict[str, str]:
    from slimkit.models import save_model_dir

    model = final.get("_model", ctx.original)
    with atomic_dir(ctx.out_dir / "final") as tmp:
        save_model_dir(model, ctx.info, tmp / "model")
        shutil.copyfile(final["onnx"], tmp / Path(final["onnx"]).name)
    return {"model_dir": str(ctx.out_dir / "final" / "model"),
            "onnx": str(ctx.out_dir / "final" / Path(final["onnx"]).name)}


def build_report(ctx, recipe, state) -> dict[str, Any]:
    """Measure every stage, write final/, report.json and report.html; returns the report."""
    from slimkit.compress.curve import curve_section, limit_section, training_section
    from slimkit.profile.profiler import _environment
    from slimkit.report.html import write_html_report

    with tempfile.TemporaryDirectory(prefix="slimkit-measure-") as tmp:
        stages, cuts = _collect(ctx, recipe, Path(tmp))
        conditions = _measure(stages + cuts, ctx)
        baseline, final = stages[0], stages[-1]
        files = _write_final(ctx, final, stages)
        report = {
            "version": REPORT_VERSION, "model": ctx.info.spec, "recipe": recipe.name, "data": ctx.data_spec,
            **_budget_section(ctx, baseline, final),
            "baseline": _public(baseline), "final": {**_public(final), **files},
            "speedup": baseline["latency_ms"] / final["latency_ms"],
            "accuracy_drop": baseline["accuracy"] - final["accuracy"],
            "steps": [_public(s) for s in stages[1:]], "layers": _layers(baseline, final),
            "conditions": conditions, "environment": _environment(ctx.threads),
            "baseline_training": training_section(ctx, recipe), "curve": curve_section(baseline, cuts, final),
        }
        report["accuracy_limit"] = limit_section(ctx, recipe, report)
    for stage in report["steps"] + [report["baseline"]]:
        stage.pop("onnx", None)
    atomic_write_json(ctx.out_dir / "report.json", report)
    write_html_report(report, ctx.out_dir / "report.html")
    return report
