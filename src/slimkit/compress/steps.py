"""The compress pipeline's steps, one registered function each: train, prune, finetune, quantize, export, deploy.

A step gets the run context, the current torch model and its recipe params, works in
its own (temporary) step directory, and returns the model it produced.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from slimkit.compress.budget import Budget
from slimkit.compress.recipe import STEPS, register_step
from slimkit.errors import BadInputError, SlimkitError

__all__ = ["RunContext", "StepResult", "register_step", "STEPS", "check_step_params"]

log = logging.getLogger(__name__)

TARGET_MARGIN = 0.95
PRUNE_TOLERANCE = 0.1  # PruneConfig's default relative miss for a measured (latency) target
CEILING_RETRIES = 3  # macs/params budgets are ceilings: re-prune aiming lower when the pruner lands above one
INT8_GAIN_MARGIN = 0.7  # a pruned model gains less from int8 than the original: count on 70% of it
MAX_PRUNE_TARGET = 0.95  # PruneConfig targets are fractions below 1


@dataclass
class RunContext:
    out_dir: Path
    data: Any  # DataBundle
    data_spec: str
    input_size: tuple[int, int, int]
    budget: Budget
    info: Any  # ModelInfo of the model being compressed
    threads: int
    seed: int
    trained: bool  # the given model is already trained: the train step is skipped
    has_quantize: bool
    val_samples: int | None = None
    original: nn.Module | None = None  # the trained, uncompressed model: the distillation teacher
    say: Callable[[str], None] = lambda msg: log.info(msg)
    trust_code: bool = False  # the model's code was named explicitly (or trusted): its step directories reload
    base: nn.Module | None = None  # an in-memory model's architecture, for reloading its step directories
    limit: Any = None  # AccuracyLimit of the run (slimkit.compress.limit)
    finetune_params: dict[str, Any] | None = None  # the recipe's finetune step: how to recover after each cut
    _baseline_top1: float | None = None

    def baseline_top1(self) -> float:
        """The trained original's val top-1 in points (torch fp32): what the accuracy limit counts from."""
        if self._baseline_top1 is None:
            from slimkit.compress.recover import val_top1

            self._baseline_top1 = val_top1(self, self.original)
        return self._baseline_top1

    def reload(self, path: Path) -> nn.Module:
        """The model saved in a step directory, rebuilt exactly (pruned shapes included)."""

        from slimkit.models import load_model_dir

        base = copy.deepcopy(self.base) if self.base is not None else None
        return load_model_dir(path, trust_code=self.trust_code, base=base)[0]


@dataclass
class StepResult:
    model: nn.Module
    onnx_path: Path | None = None  # set by steps whose deployable output is an ONNX file (quantize)
    details: dict[str, Any] = field(default_factory=dict)
    extra_models: dict[str, nn.Module] = field(default_factory=dict)  # saved as cuts/NAME/model (the cuts tried)


def _check_params(params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadInputError(f"unknown params: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


_TRAIN_KEYS = {"epochs", "lr", "batch_size", "optimizer", "weight_decay", "warmup_epochs", "label_smoothing", "grad_clip",
               "patience", "min_delta"}
_FINETUNE_KEYS = _TRAIN_KEYS | {"distill", "temperature", "alpha"}
_PRUNE_KEYS = {"target", "criterion", "allocation", "round_to", "unstructured", "tolerance", "int8_aware",
               "schedule", "steps", "epochs", "lr", "batch_size", "kd", "max_stage_cut", "gradual"}
_NOT_PRUNE_CONFIG = ("target", "int8_aware", "max_stage_cut", "gradual")  # prune-step params that PruneConfig does not take
SKIP_CUT = 0.97  # a stage asked to keep more than this of its input is skipped: the model is already there
TRAIN_PATIENCE = 3  # the baseline trains until val top-1 has not improved for this many epochs (or the cap)


def _check_train(params: dict[str, Any], allowed: set[str] = _TRAIN_KEYS | {"loss", "loss_layer"}) -> None:
    from slimkit.engine import TrainConfig

    _check_params(params, allowed)
    TrainConfig(**{k: v for k, v in params.items() if k in _TRAIN_KEYS})


def _check_finetune(params: dict[str, Any]) -> None:
    _check_train(params, _FINETUNE_KEYS)
    for key, ok, what in (("temperature", lambda v: 0 < v < math.inf, "> 0"), ("alpha", lambda v: 0 <= v <= 1, "in [0, 1]")):
        value = params.get(key, 0.5)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise BadInputError(f"{key} must be a number {what}, got {value!r}")


def _check_prune(params: dict[str, Any]) -> None:
    from slimkit.compress.prune import PruneConfig

    _check_params(params, _PRUNE_KEYS)
    if not isinstance(params.get("gradual", True), bool):
        raise BadInputError(f"gradual must be true or false, got {params['gradual']!r}")
    cut = params.get("max_stage_cut", 0.5)
    if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0 < cut < 1:
        raise BadInputError(f"max_stage_cut must be a fraction in (0, 1), got {cut!r}")
    PruneConfig(target=str(params.get("target") or "macs=0.5"), **{k: v for k, v in params.items() if k not in _NOT_PRUNE_CONFIG})


def _quantize_config(params: dict[str, Any]):
    """PTQ (kind ptq, the default), QAT or codebook config: unknown params and bad values give one line."""
    from slimkit.compress.quantize.config import load_config

    return load_config({**params, "kind": str(params.get("kind", "ptq"))})


def _check_export(params: dict[str, Any]) -> None:
    _check_params(params, {"opset"})
    opset = params.get("opset", 17)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 7 <= opset <= 23:
        raise BadInputError(f"opset must be an integer in 7..23, got {opset!r}")


def _check_deploy(params: dict[str, Any]) -> None:
    from slimkit.deploy.runtime import parse_runtimes

    _check_params(params, {"to", "repetitions"})
    to = params.get("to", ["onnx"])
    if not isinstance(to, str) and not (isinstance(to, list) and all(isinstance(t, str) for t in to)):
        raise BadInputError(f"to must be a runtime name or a list of them, got {to!r}")
    parse_runtimes(to)
    repetitions = params.get("repetitions", 50)
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise BadInputError(f"repetitions must be an integer >= 1, got {repetitions!r}")


def check_step_params(recipe) -> None:
    """Check every step's params before a run writes anything: a typo must not surface after training."""
    for step in recipe.steps:
        check = STEPS.meta(step.type).get("check")
        try:
            if check is not None:
                check(dict(step.params))
        except BadInputError as exc:
            raise BadInputError(f"recipe {recipe.name!r}, step {step.label!r}: {exc}") from exc


def _train_config(ctx: RunContext, params: dict[str, Any]):
    from slimkit.engine import TrainConfig

    kwargs = {k: v for k, v in params.items() if k in _TRAIN_KEYS}
    return TrainConfig(seed=ctx.seed, **kwargs)


@register_step("train", check=_check_train)
def train_step(ctx: RunContext, model: nn.Module, params: dict[str, Any], work: Path) -> StepResult:
    from slimkit.engine import fit
    from slimkit.engine.losses import make_loss

    if ctx.trained:
        return StepResult(model, details={"skipped": "the given model is a trained slimkit checkpoint"})
    loss_name = params.get("loss", "ce")
    example = ctx.data.train.transform(ctx.data.train.images[:2])
    loss = make_loss(loss_name, model, example, **({"layer": params["loss_layer"]} if params.get("loss_layer") else {}))
    config = _train_config(ctx, {"patience": TRAIN_PATIENCE, **params})
    config = config.replace(keep_best=config.patience is not None)  # patience: null = fixed epochs, as before
    ctx.say(f"training up to {config.epochs} epochs" + (f", early stopping after {config.patience} without gain"
                                                         if config.patience else "") + f" ({loss_name} loss)")
    result = fit(model, ctx.data, config, out_dir=work, resume=work.exists(), info=ctx.info, loss_fn=loss)
    if loss is not None:
        loss.close()
    stopping = result.metrics["early_stopping"]
    if stopping["not_converged_warning"]:
        stopping["not_converged_warning"] += "; raise train.epochs for a fair baseline"
        ctx.say(f"baseline {stopping['not_converged_warning']}")
    return StepResult(model, details={"epochs": result.epochs_completed, "loss": loss_name, "early_stopping": stopping})


def _prune_target(ctx: RunContext, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The pruner's target for this budget, and how it was derived."""
    if params.get("target"):
        return str(params["target"]), {"from": "recipe"}
    budget = ctx.budget
    if budget.kind in ("macs", "params"):
        # Aim a little under: the pruner lands within a few percent of its target, and the budget is a ceiling.
        return f"{budget.kind}={budget.fraction * TARGET_MARGIN:g}", {"from": "budget"}
    if budget.kind == "size":
        return _size_target(ctx)
    fraction, how = _latency_fraction(ctx), {"from": "budget"}
    if ctx.has_quantize and params.get("int8_aware", True):
        # Leave to int8 only the speedup it was just measured to give this model, with a margin.
        from slimkit.compress.int8_gain import measure_int8_gain, measure_int8_gain_pruned

        calib_x, _ = ctx.data.train.tensors()
        gain = measure_int8_gain(ctx.original, ctx.input_size, calib_x[:32].numpy(), ctx.threads)
        how["int8_gain"] = gain
        planned = fraction * max(1.0, gain["gain"] * INT8_GAIN_MARGIN)
        if planned > fraction:  # check the gain at the size it buys: a pruned model gains less
            pruned = measure_int8_gain_pruned(ctx.original, ctx.input_size, calib_x[:32].numpy(), ctx.threads,
                                              planned)
            if pruned is not None:
                how["int8_gain_pruned"] = pruned
                planned = fraction * max(1.0, min(gain["gain"], pruned["gain"]) * INT8_GAIN_MARGIN)
        fraction = planned
    # The budget is a ceiling and the latency search accepts up to target x (1 + tolerance): aim under it.
    fraction /= 1.0 + float(params.get("tolerance", PRUNE_TOLERANCE))
    return f"latency={_clamped(fraction, how):g}", how


def _clamped(fraction: float, how: dict[str, Any]) -> float:
    """The pruner's target, at most MAX_PRUNE_TARGET; a clamp is recorded in `how` and logged."""
    if fraction < MAX_PRUNE_TARGET:
        return fraction
    how["clamped"] = {"wanted": fraction, "used": MAX_PRUNE_TARGET,
                      "why": "the later steps are expected to meet the budget alone; pruning stays light"}
    log.warning("prune target %.3f of the original clamped to %g: %s", fraction, MAX_PRUNE_TARGET,
                how["clamped"]["why"])
    return MAX_PRUNE_TARGET


def _size_target(ctx: RunContext) -> tuple[str, dict[str, Any]]:
    """The params fraction whose file meets a size budget. With a quantize step, the int8 file of the original
    is measured and modelled as fixed bytes plus one byte per parameter (the fixed part is an upper bound:
    per-channel scales shrink with pruning too), so the budget holds as a ceiling."""
    budget = ctx.budget
    if not ctx.has_quantize:
        how: dict[str, Any] = {"from": "budget"}
        return f"params={_clamped(budget.fraction * TARGET_MARGIN, how):g}", how
    from slimkit.compress.int8_gain import measure_int8_size

    calib_x, _ = ctx.data.train.tensors()
    size = measure_int8_size(ctx.original, ctx.input_size, calib_x[:32].numpy())
    fixed = max(0, size["int8_bytes"] - size["params"])
    fraction = (budget.fraction * TARGET_MARGIN * size["fp32_bytes"] - fixed) / size["params"]
    if fraction <= 0:
        raise BadInputError(f"size budget {budget} is out of reach: {budget.fraction * size['fp32_bytes']:.0f} bytes, "
                            f"but the int8 file of this model has {fixed} bytes besides its weights "
                            f"(int8 {size['int8_bytes']} of fp32 {size['fp32_bytes']} bytes)")
    how = {"from": "budget", "int8_size": size}
    return f"params={_clamped(fraction, how):g}", how


def _latency_fraction(ctx: RunContext) -> float:
    budget = ctx.budget
    if budget.fraction is not None:
        return budget.fraction
    # An absolute latency is ONNX Runtime milliseconds (what the report measures): never convert with torch's.
    from slimkit.profile.latency import measure_latency

    timing, errors = measure_latency(ctx.original, torch.randn(1, *ctx.input_size), threads=ctx.threads,
                                     repetitions=30, min_time_s=0.5)
    if "onnxruntime" not in timing:
        raise SlimkitError(f"latency budget {budget} is ONNX Runtime time, but ONNX Runtime cannot run the model "
                           f"({errors.get('onnxruntime', 'unknown error')})")
    base_ms = timing["onnxruntime"].median
    fraction = budget.absolute_ms / base_ms
    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"latency budget {budget} vs baseline {base_ms:.3f} ms: nothing to prune (fraction {fraction:.3f})")
    return fraction


def _quant_data(ctx: RunContext, calib_samples: int):
    """Calibration and val images of the run: the quantize and deploy steps calibrate on the very same."""
    from slimkit.compress.quantize.calib import load_quant_data

    return load_quant_data(ctx.data_spec, ctx.input_size, calib_samples=calib_samples, val_samples=ctx.val_samples,
                           mean=ctx.data.mean, std=ctx.data.std, seed=ctx.seed)


@register_step("quantize", check=_quantize_config)
def quantize_step(ctx: RunContext, model: nn.Module, params: dict[str, Any], work: Path) -> StepResult:
    """Static int8 (kind ptq, the default), quantization-aware training (qat) or weight codebooks (codebook)."""
    from slimkit.compress.quantize.api import quantize
    kind = str(params.get("kind", "ptq"))
    if kind == "ptq" and ctx.limit is not None and ctx.limit.max_drop is not None:
        from slimkit.compress.recover import val_top1

        allowance = ctx.limit.int8_allowance(ctx.baseline_top1(), val_top1(ctx, model), params.get("max_drop"))
        params = {**params, "max_drop": round(allowance, 4)}
    config = _quantize_config(params)
    data = ctx.data
    if kind == "ptq":
        data = _quant_data(ctx, config.calib_samples)
        ctx.say(f"quantizing to int8 ({config.method}, max drop {config.max_drop} points, speed guard on)")
    else:
        ctx.say(f"quantizing: {kind} ({config.epochs} training epochs)")
    result = quantize(model, config, data=data, input_size=ctx.input_size, out_dir=work / "onnx",
                      teacher=ctx.original, seed=ctx.seed)
    details: dict[str, Any] = {"quantize": result.report}
    guard = result.report.get("speed_guard") or {}
    fp32 = result.files.get("fp32_onnx")
    if kind == "ptq" and guard.get("slower_than_fp32") and fp32 is not None and fp32.is_file():
        slower = f"int8 measured {guard['speedup']:.2f}x of fp32's speed (slower) in the speed guard's interleaved timing"
        needed = _int8_needed_for(ctx)
        if needed:
            details["kept_int8_slower"] = f"{slower}: int8 kept, {needed}"
            ctx.say(details["kept_int8_slower"])
        else:
            # The deployable is the fastest model within the limit: int8 measured slower hands on the fp32 one.
            details["kept_fp32"] = f"{slower}: this stage hands on the fp32 model"
            ctx.say(details["kept_fp32"])
            return StepResult(model, onnx_path=fp32, details=details)
    if kind == "codebook":
        details["note"] = ("this stage's ONNX file holds the decoded fp32 weights; the compressed form is the "
                           f"codebook file of {result.report['size_bytes']['codebook']} bytes")
    return StepResult(result.model, onnx_path=result.onnx_path, details=details)


def _int8_needed_for(ctx: RunContext) -> str | None:
    """Why int8 stays even when measured slower: a size budget needs its bytes (latency, MACs and params do not)."""
    if ctx.budget is not None and ctx.budget.kind == "size":
        return "the size budget needs its 4x smaller weights"
    return None


@register_step("export", check=_check_export)
def export_step(ctx: RunContext, model: nn.Module, params: dict[str, Any], work: Path) -> StepResult:
    from slimkit.deploy.onnx_export import export_onnx

    report = export_onnx(model, ctx.input_size, work / "model.onnx", opset=int(params.get("opset", 17)))
    return StepResult(model, onnx_path=work / "model.onnx", details={"export": report.to_dict()})


def _last_step(ctx: RunContext, step_type: str) -> tuple[Path, dict] | None:
    """The directory and step.json of the run's latest completed step of `step_type`, if any."""
    import json

    found = None
    for step_dir in sorted((ctx.out_dir / "steps").glob("*")):
        meta_file = step_dir / "step.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        if meta.get("type") == step_type:
            found = (step_dir, meta)
    return found


def _last_quantize(ctx: RunContext) -> tuple[Path, dict] | None:
    """The int8 QDQ ONNX and params of the run's latest completed quantize step, if any."""
    found = _last_step(ctx, "quantize")
    if found is None or not str(found[1].get("onnx") or "").endswith(".int8.onnx"):
        return None  # none, or one that handed on fp32 (int8 measured slower)
    return found[0] / found[1]["onnx"], found[1].get("params", {})


@register_step("deploy", check=_check_deploy)
def deploy_step(ctx: RunContext, model: nn.Module, params: dict[str, Any], work: Path) -> StepResult:
    """Every runtime in `to`, checked in its own runtime; int8 too after a quantize step (same calibration)."""
    from slimkit.deploy.multi import Int8Source, export_multi
    from slimkit.deploy.runtime import parse_runtimes

    # ONNX always: the compress report measures every stage on ONNX Runtime.
    names = list(dict.fromkeys(["onnx", *parse_runtimes(params.get("to", ["onnx"]))]))
    quant = _last_quantize(ctx)
    calib_samples = int(quant[1].get("calib_samples", 256)) if quant else 256
    data = _quant_data(ctx, calib_samples)
    int8 = Int8Source(quant[0], data.calib_x, data.val_x, data.val_y, origin="quantize step") if quant else None
    ctx.say(f"deploying to {', '.join(names)}" + (" (fp32 and int8)" if int8 else " (fp32)"))
    report = export_multi(model, ctx.input_size, work / "deploy", names, check_x=data.calib_x[:4], int8=int8,
                          threads=ctx.threads, repetitions=int(params.get("repetitions", 50)), say=ctx.say)
    onnx = work / "deploy" / ("model.int8.onnx" if int8 else "model.onnx")
    return StepResult(model, onnx_path=onnx, details={"deploy": report})
