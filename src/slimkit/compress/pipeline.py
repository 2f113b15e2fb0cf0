"""`compress()`: run a recipe's steps toward a budget, checkpointing each step so a run can resume.

Layout of a run directory:
    INCOMPLETE            present until the run finishes (removed last)
    state.json            the resolved run settings and the steps completed so far
    steps/NN-LABEL/       each step's output: a model directory (+ ONNX files for quantize) + step.json
    .work/NN-LABEL/       a step in progress (training checkpoints); removed when the step completes
    report.json, report.html, args.json   written at the end
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from slimkit.compress.budget import parse_budget
from slimkit.compress.limit import AccuracyLimit
from slimkit.compress.recipe import STEPS, Recipe
from slimkit.compress.steps import RunContext, StepResult, check_step_params
from slimkit.errors import BadInputError
from slimkit.utils.io import atomic_dir, atomic_write_json

__all__ = ["compress", "INCOMPLETE_MARKER", "STATE_FILE"]

log = logging.getLogger(__name__)
INCOMPLETE_MARKER = "INCOMPLETE"
STATE_FILE = "state.json"



def _step_dirname(index: int, label: str) -> str:
    return f"{index:02d}-{label}"


def _load_state(out_dir: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> dict[str, Any]:
    state_path = out_dir / STATE_FILE
    if out_dir.exists() and any(out_dir.iterdir()):
        if resume and state_path.is_file():
            return _resumed_state(out_dir, json.loads(state_path.read_text()), settings)
        if resume:
            raise BadInputError(f"{out_dir} has no {STATE_FILE}: nothing to resume")
        if not overwrite:
            raise BadInputError(f"{out_dir} already exists; use --resume to continue it or --overwrite to start again")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INCOMPLETE_MARKER).write_text("this run has not finished; `slimkit compress ... --resume` continues it\n")
    state = {"version": 1, "settings": settings, "completed": []}
    atomic_write_json(state_path, state)
    return state


def _resumed_state(out_dir: Path, state: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Reuse the completed steps; a new budget invalidates everything after training."""
    changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
    if set(changed) - {"budget"}:
        raise BadInputError(f"{out_dir} was started with other settings ({', '.join(changed)}); "
                            "resume with the same arguments or use --overwrite")
    if changed:
        kept = []
        for entry in state["completed"]:
            if entry["type"] != "train":
                break
            kept.append(entry)
        for entry in state["completed"][len(kept):]:
            shutil.rmtree(out_dir / "steps" / entry["name"], ignore_errors=True)
        state["completed"], state["settings"] = kept, settings
        atomic_write_json(out_dir / STATE_FILE, state)
    return state


def _save_step(out_dir: Path, name: str, result: StepResult, ctx: RunContext, work: Path, step: dict) -> Path:
    from slimkit.models import save_model_dir

    final = out_dir / "steps" / name
    with atomic_dir(final) as tmp:
        save_model_dir(result.model, ctx.info, tmp / "model")
        if result.onnx_path is not None:
            shutil.copytree(result.onnx_path.parent, tmp / "onnx")
        for cut_name, cut_model in result.extra_models.items():
            save_model_dir(cut_model, ctx.info, tmp / "cuts" / cut_name / "model")
        atomic_write_json(tmp / "step.json", {**step, "details": result.details,
                                              "onnx": f"onnx/{result.onnx_path.name}" if result.onnx_path else None})
    shutil.rmtree(work, ignore_errors=True)
    return final


def _run_steps(recipe: Recipe, ctx: RunContext, model: torch.nn.Module, state: dict) -> torch.nn.Module:
    done = {entry["name"] for entry in state["completed"]}
    for index, step in enumerate(recipe.steps):
        name = _step_dirname(index, step.label)
        step_dir = ctx.out_dir / "steps" / name
        if name in done:
            model = ctx.reload(step_dir / "model")
            ctx.say(f"step {name}: already complete, reloaded")
        else:
            work = ctx.out_dir / ".work" / name
            work.parent.mkdir(parents=True, exist_ok=True)
            result = STEPS.get(step.type)(ctx, model, dict(step.params), work)
            _save_step(ctx.out_dir, name, result, ctx, work, step.model_dump())
            state["completed"].append({"name": name, "type": step.type})
            atomic_write_json(ctx.out_dir / STATE_FILE, state)
            model = result.model
        if step.type == "train" and ctx.original is None:
            ctx.original = copy.deepcopy(model).eval()
    return model


def compress(
    model: str | nn.Module,
    recipe: Recipe | str = "default",
    budget: str | None = None,
    *,
    out_dir: str | Path,
    data: str = "digits",
    input_size: tuple[int, int, int] | None = None,
    info: Any = None,
    trust_code: bool = False,
    train_samples: int | None = None,
    val_samples: int | None = None,
    threads: int = 1,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
    max_drop: float | None = None,
    priority: str | None = None,
) -> dict[str, Any]:
    """Compress `model` toward `budget` with `recipe` into `out_dir`; returns report.json's content.

    `model`: an nn.Module (changed in place: trained, pruned...; give a copy to keep yours), or a
    spec (timm:NAME, tv:NAME, a model directory, path/to/file.py:factory; a new model is built).
    Naming a .py file trusts it; a model directory built from user code needs `trust_code=True`.
    `recipe`: a Recipe, a built-in recipe name or a YAML/JSON file; `budget` defaults to the recipe's.
    `max_drop` (top-1 points for pruning, fine-tuning and int8 together) and `priority` (budget | accuracy:
    what gives when the budget cannot be met within it) default to the recipe's.
    """
    from slimkit.compress.measure import build_report
    from slimkit.compress.recipe import load_recipe

    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    recipe = recipe.with_limit(max_drop, priority)
    budget_obj = parse_budget(budget or recipe.budget or "latency=0.25")
    check_step_params(recipe)
    out_dir = Path(out_dir)
    ctx, model = _prepare(model, out_dir, recipe, data, budget_obj, input_size, info, trust_code, train_samples,
                          val_samples, threads, seed, say or (lambda m: log.info(m)))
    settings = {"model": ctx.info.spec, "recipe": recipe.model_dump(), "data": data, "budget": str(budget_obj),
                "input_size": list(ctx.input_size), "train_samples": train_samples, "val_samples": val_samples,
                "threads": threads, "seed": seed}
    state = _load_state(out_dir, settings, resume, overwrite)
    if ctx.trained or not any(step.type == "train" for step in recipe.steps):
        ctx.original = copy.deepcopy(model).eval()  # the baseline (and teacher) is the model as given
    _run_steps(recipe, ctx, model, state)
    report = build_report(ctx, recipe, state)
    (out_dir / INCOMPLETE_MARKER).unlink(missing_ok=True)
    return report


def _module_info(model: nn.Module, info: Any, input_size: tuple | None) -> Any:
    """The ModelInfo of an in-memory model: the caller's, or one naming its class (rebuilt from the model itself)."""
    from slimkit.models import ModelInfo
    from slimkit.models.resolve import declared_input_size

    if info is not None:
        return copy.deepcopy(info)
    size = input_size or declared_input_size(model)
    if size is None:
        raise BadInputError("compress needs the input size of an in-memory model: pass input_size=(C, H, W)")
    return ModelInfo(source="module", name=type(model).__name__, input_size=tuple(size))


def _load(spec: str | nn.Module, data_spec: str, input_size, info, trust_code: bool, seed: int, sizes):
    """(model, info, data bundle, trained?, trust) for a spec or an in-memory model."""
    from slimkit.data import load_data
    from slimkit.models import is_code_spec, is_model_dir, load_model

    if isinstance(spec, nn.Module):
        info = _module_info(spec, info, input_size)
        size = tuple(input_size or info.input_size)
        return spec, info, load_data(data_spec, size, seed=seed, **sizes), False, trust_code
    trust = trust_code or is_code_spec(spec)  # a code file named explicitly is trusted
    probe, info = load_model(spec, trust_code=trust)
    size = tuple(input_size or info.input_size)
    bundle = load_data(data_spec, size, seed=seed, **sizes)
    if not is_model_dir(spec):
        torch.manual_seed(seed)
        probe, info = load_model(spec, num_classes=bundle.num_classes, trust_code=trust)
    elif info.num_classes is not None and info.num_classes != bundle.num_classes:
        raise BadInputError(f"{spec} predicts {info.num_classes} classes but {data_spec} has {bundle.num_classes}")
    trained = is_model_dir(spec) and (Path(spec) / "metrics.json").is_file()
    return probe, info, bundle, trained, trust


def _prepare(spec, out_dir, recipe, data_spec, budget, input_size, info, trust_code, train_samples, val_samples,
             threads, seed, say):
    sizes = {"train_samples": train_samples, "val_samples": val_samples}
    model, info, bundle, trained, trust = _load(spec, data_spec, input_size, info, trust_code, seed, sizes)
    size = tuple(input_size or info.input_size)
    info.input_size, info.mean, info.std = size, tuple(bundle.mean), tuple(bundle.std)
    info.class_names, info.num_classes = list(bundle.class_names), bundle.num_classes
    has_quantize = any(s.type == "quantize" for s in recipe.steps)
    torch.manual_seed(seed)
    base = copy.deepcopy(model) if info.source == "module" else None
    ctx = RunContext(out_dir, bundle, data_spec, size, budget, info, threads, seed, trained, has_quantize,
                     val_samples=val_samples, say=say, trust_code=trust, base=base,
                     limit=AccuracyLimit(recipe.max_drop, recipe.priority, has_quantize),
                     finetune_params=next((dict(s.params) for s in recipe.steps if s.type == "finetune"), None))
    return ctx, model
