"""`prune_(model, config)`: structured pruning to a budget, in place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from slimkit.compress.prune.adapters import analyse_model, classifier_layers, clear_caches
from slimkit.compress.prune.config import PruneConfig
from slimkit.compress.prune.criteria import Calibration, build_importance
from slimkit.compress.prune.errors import internal_errors, operation
from slimkit.compress.prune.measure import count_macs, count_params
from slimkit.compress.prune.safety import locate_failure
from slimkit.compress.prune.search import Trial, search_latency, search_latency_table, search_structural
from slimkit.compress.prune.structured import Plan, allocate, apply_plan, layer_stats, plan_groups
from slimkit.compress.prune.whole import kept_whole_summary
from slimkit.errors import BadInputError

__all__ = ["prune_", "PruneResult", "layer_widths", "kept_ratios"]

log = logging.getLogger(__name__)
MAX_REPAIRS = 6


@dataclass
class PruneResult:
    """What `prune_` did: measured before/after figures, how close to the target, per-layer widths."""

    target: str | None
    before: dict[str, Any]
    after: dict[str, Any]
    achieved: float | None  # measured ratio of the target's quantity
    level: float | None  # the pruning level of the one-shot cut (None for iterative and LAPP)
    round_to: int
    kept: dict[str, dict[str, Any]]
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    schedule: str = "oneshot"
    stages: list[dict[str, Any]] = field(default_factory=list)  # iterative stages, or LAPP's end state
    training: dict[str, Any] | None = None  # the training after (or during) pruning
    unstructured: dict[str, Any] | None = None  # weight sparsity on top, with its file sizes

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class _Broken(Exception):
    def __init__(self, names: list[str], message: str) -> None:
        super().__init__(message)
        self.names = names


def _same_code(model: nn.Module, bad: nn.Module, protected: list[str]) -> list[str]:
    """The failing module, and every module of its class when that class holds only torch.nn layers
    (the same forward code will break the same way everywhere), or when a module of that class broke
    before (MViTv2: one attention per repair ran out of repairs with a block left)."""
    names = {m: n for n, m in model.named_modules()}
    leafy = all(type(m).__module__.startswith("torch.nn") for m in bad.modules() if m is not bad)
    again = any(type(m) is type(bad) for n, m in model.named_modules() if n in protected)
    same = [names[m] for m in model.modules() if type(m) is type(bad)] if leafy or again else []
    return [names[bad]] + [n for n in same if n != names[bad]]


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            widths[name] = m.out_features
    return widths


def kept_ratios(before: dict[str, int], after: dict[str, int]) -> dict[str, dict[str, Any]]:
    return {n: {"before": w, "after": after.get(n, w), "kept": round(after.get(n, w) / w, 4)} for n, w in before.items() if w}


def prune_(
    model: nn.Module,
    config: PruneConfig,
    example_inputs: torch.Tensor | None = None,
    calib: Calibration | None = None,
    *,
    data: Any = None,
    progress: bool = False,
    allocator: Callable[[Plan, int], Callable[[float], list[int]]] | None = None,
) -> PruneResult:
    """Prune `model` in place (channels, heads, hidden units) to `config`'s budget; returns what was done.

    Schedules, training on `data` and weight sparsity (see PruneConfig) run in prune.schedules.
    `allocator(plan, round_to)` may replace the configured allocation with any family of kept
    counts indexed by a level in [0, max_layer_prune] (used by pruning at initialization).
    Raises BadInputError for an unreachable target or an unprunable model, and PruneInternalError
    (naming the module and the operation) for anything unexpected."""
    with internal_errors(model):
        return _prune(model, config, example_inputs, calib, data, progress, allocator)


def _prune(model, config, example_inputs, calib, data, progress, allocator) -> PruneResult:
    if example_inputs is None or config.schedule != "oneshot" or config.epochs or config.unstructured:
        from slimkit.compress.prune.schedules import run_schedule

        with operation(f"running the {config.schedule} schedule"):
            return run_schedule(model, config, example_inputs, calib, data=data, progress=progress)
    model.eval()
    x = example_inputs[:1].detach()
    try:
        with torch.no_grad():
            reference_out = model(x)
    except Exception as exc:  # the user's model and input disagree: not a pruning failure
        raise BadInputError(f"the model does not run on an input of shape {list(x.shape)}: {type(exc).__name__}: {exc}") from exc
    clear_caches(model)
    out_shape = tuple(reference_out.shape)
    classifier = classifier_layers(model, out_shape[-1])
    importance = build_importance(config.criterion, model, calib, config.seed)
    before = {"macs": count_macs(model, x), "params": count_params(model)}
    widths = layer_widths(model)
    protected: list[str] = []
    table, table_notes = None, []
    if config.allocation == "latency-table" and allocator is None:
        from slimkit.compress.prune.latency_alloc import resolve_table

        with operation("building the per-layer latency table"):
            table, table_notes = resolve_table(model, x, config, progress)

    def check(pruned: nn.Module) -> None:
        with operation("running the pruned model"):
            bad, message = locate_failure(pruned, x)
        if bad is not None:
            raise _Broken(_same_code(pruned, bad, protected), message)
        with operation("running the pruned model"), torch.no_grad():
            shape = tuple(pruned(x).shape)
        clear_caches(pruned)
        if shape != out_shape:
            raise BadInputError(f"pruning changed the output shape {out_shape} -> {shape}")

    for _ in range(MAX_REPAIRS):
        plan = plan_groups(model, x, importance, classifier, list(config.ignore) + protected, analyse_model(model))
        if not plan.groups:
            raise BadInputError("nothing in this model can be pruned safely (no prunable channel groups): "
                                + kept_whole_summary(plan, layer_stats(model, x)))
        try:
            best, trials = _search(model, x, plan, before, config, check, allocator, table)
            break
        except _Broken as broken:
            names = [n for n in broken.names if n not in protected]
            if not names:
                where = broken.names[0] or f"the model itself ({type(model).__name__}, its own forward)"
                raise BadInputError(f"pruning breaks the forward of {where} ({broken}); cannot repair") from broken
            log.info("forward broke in %s (%s); protecting %s", broken.names[0], broken, ", ".join(names))
            protected.extend(names)
    else:
        raise BadInputError(f"pruning kept breaking the model's forward after protecting {', '.join(protected)}")
    with operation("pruning the chosen channels"):
        apply_plan(model, x, plan, best.keeps)
    check(model)
    after = {"macs": count_macs(model, x), "params": count_params(model)}
    return PruneResult(config.target, before, after, _achieved(config, best, after, before), best.level,
                       best.round_to, kept_ratios(widths, layer_widths(model)), [t.summary() for t in trials],
                       table_notes + plan.frozen_notes + [f"{n} protected: its forward broke when pruned" for n in protected],
                       protected)


def _achieved(config: PruneConfig, best: Trial, after: dict, before: dict) -> float | None:
    target = config.parsed_target
    if target is None:
        return None
    if target.kind == "latency":
        return best.ratio
    return after[target.kind] / before[target.kind]


def _search(model, x, plan: Plan, before, config: PruneConfig, check, allocator=None, table=None):
    target = config.parsed_target
    round_to = config.round_to or 1
    path = None
    if table is not None:
        from slimkit.compress.prune.latency_alloc import latency_path

        path = latency_path(plan, table, round_to, config.max_layer_prune)
        alloc = path.at
    elif allocator is not None:
        alloc = allocator(plan, round_to)
    else:
        alloc = lambda level: allocate(plan, level, config.allocation, round_to, config.max_layer_prune)  # noqa: E731
    if target is None:
        keeps = alloc(config.ratio)
        trial = Trial(config.ratio, round_to, keeps, 0, 0, 1.0)
        from slimkit.compress.prune.search import build_trial

        check(build_trial(model, x, plan, keeps))
        return trial, [trial]
    if target.kind == "latency" and path is not None:
        best, trials = search_latency_table(model, x, plan, target.ratio, config, path, check)
    elif target.kind == "latency":
        roundings = [config.round_to] if config.round_to else [1, 8, 16]
        best, trials = search_latency(model, x, plan, before, target.ratio, config, roundings, check)
    else:
        stats = layer_stats(model, x)
        best, trials = search_structural(model, x, plan, stats, before, target.kind, target.ratio, alloc,
                                         config.max_layer_prune, check, round_to)
    if abs(best.ratio / target.ratio - 1) > config.tolerance and not (target.kind == "latency" and best.ratio < target.ratio):
        message = (f"target {target} is out of reach: the closest measured {target.kind} ratio was {best.ratio:.3f} "
                   f"(every layer keeps >= {1 - config.max_layer_prune:.0%}; {kept_whole_summary(plan, layer_stats(model, x))})")
        # A pipeline toward a budget (compress) would rather keep the deepest cut and report the miss than stop.
        if not (config.closest and target.kind == "latency"):
            raise BadInputError(message)
        log.warning("%s; keeping that closest cut", message)
        plan.frozen_notes.append(f"{message}; the closest cut was kept")
    return best, trials
