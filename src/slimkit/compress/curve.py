"""The report's accuracy side: the cuts tried (accuracy-latency curve), the accuracy limit's verdict, the baseline's
convergence. Every cut is measured with the other stages: ONNX Runtime accuracy, interleaved latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

__all__ = ["cut_stages", "curve_section", "limit_section", "training_section"]


def cut_stages(ctx, step_dir: Path, step_name: str, details: dict, stage: Callable, tmp: Path) -> list[dict]:
    """One stage per cut the step kept a model of (steps/NN-prune/cuts/NAME/model), for the same measurement."""
    out = []
    for cut in details.get("cuts") or []:
        model_dir = step_dir / "cuts" / cut["name"] / "model"
        if not model_dir.is_dir():
            continue
        s = stage(f"{step_name}:{cut['name']}", ctx.reload(model_dir), None, ctx, tmp, "cut")
        s["_cut"] = cut
        out.append(s)
    return out


def _point(s: dict, baseline: dict, kind: str) -> dict[str, Any]:
    cut = s.get("_cut", {})
    return {"name": s["name"], "kind": kind, "accuracy": s["accuracy"], "drop": baseline["accuracy"] - s["accuracy"],
            "latency_ms": s["latency_ms"], "latency_fraction": s["latency_ms"] / baseline["latency_ms"],
            "macs": s["macs"], "kept": cut.get("kept"), "accuracy_after_cut": cut.get("accuracy_cut"),
            "finetune_epochs": (cut.get("recovery") or {}).get("epochs")}


def curve_section(baseline: dict, cuts: list[dict], final: dict) -> list[dict[str, Any]]:
    """Accuracy against measured latency: the baseline, every cut tried (fine-tuned), and the final model."""
    return [_point(baseline, baseline, "baseline"), *(_point(c, baseline, "cut") for c in cuts),
            _point(final, baseline, "final")]


def limit_section(ctx, recipe, report: dict) -> dict[str, Any]:
    """Whether the run stayed within max_drop, and one line saying what the budget cost."""
    max_drop, priority = recipe.max_drop, recipe.priority
    drop, met = report["accuracy_drop"], report["budget_met"]
    fraction = 100 * report["budget_detail"]["final_fraction"]
    within = max_drop is None or drop <= max_drop + 1e-9
    if max_drop is None:
        line = f"no accuracy limit set: top-1 changed {-drop:+.2f} points"
    elif within and met:
        line = f"budget met within the accuracy limit: {drop:.2f} points lost of {max_drop:g} allowed"
    elif met:
        line = (f"the budget costs {drop:.2f} points, more than max_drop {max_drop:g}: met anyway (priority budget); "
                "the curve shows what lighter cuts cost")
    elif within:
        line = (f"budget {report['budget']} NOT met within max_drop {max_drop:g} (priority {priority}): best reached "
                f"{fraction:.1f}% of the baseline {report['budget_detail']['kind']} at {drop:.2f} points lost")
    else:
        line = f"budget NOT met and {drop:.2f} points lost, beyond max_drop {max_drop:g}"
    return {"max_drop": max_drop, "priority": priority, "drop": drop, "within_limit": within, "verdict": line}


def training_section(ctx, recipe) -> dict[str, Any]:
    """How the baseline was trained: epochs, why training stopped, and whether val top-1 had flattened."""
    for index, step in enumerate(recipe.steps):
        if step.type != "train":
            continue
        meta_file = ctx.out_dir / "steps" / f"{index:02d}-{step.label}" / "step.json"
        details = json.loads(meta_file.read_text()).get("details", {}) if meta_file.is_file() else {}
        if "skipped" in details:
            return {"trained_here": False, "converged": None, "note": details["skipped"]}
        stopping = details.get("early_stopping", {})
        return {"trained_here": True, "epochs": details.get("epochs"), "stopped": stopping.get("stopped"),
                "best_epoch": stopping.get("best_epoch"), "converged": stopping.get("converged"),
                "warning": stopping.get("not_converged_warning")}
    return {"trained_here": False, "converged": None, "note": "the recipe has no train step: the model as given"}
