"""The `slimkit prune` job: validate, load, prune, fine-tune, measure, write a model directory."""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.compress.prune.config import PruneConfig, parse_target
from slimkit.compress.prune.schedules import UNSTRUCTURED_NOTE
from slimkit.errors import BadInputError

__all__ = ["PruneJob", "run_job", "UNSTRUCTURED_NOTE"]

log = logging.getLogger(__name__)


@dataclass
class PruneJob:
    model: str
    out: Path
    config: PruneConfig
    data: str | None = None
    input_size: tuple[int, int, int] | None = None
    num_classes: int | None = None
    train_samples: int | None = None
    val_samples: int | None = None
    latency: bool = True
    threads: int = 1
    seed: int = 0
    trust_code: bool = False
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cli(cls, args: dict[str, Any]) -> "PruneJob":
        """Check every argument up front: a bad one raises before anything is loaded or written."""
        from slimkit.compress.prune.criteria import CRITERIA, criterion_needs_data
        from slimkit.utils.parse import parse_input_size

        if args.get("criterion") is not None:
            CRITERIA.get(args["criterion"])  # an unknown name fails first, with the closest matches
        cfg = _config_from_args(args)
        if cfg.epochs and not args.get("data"):
            raise BadInputError(f"--epochs needs --data to train on (schedule {cfg.schedule})")
        if criterion_needs_data(cfg.criterion) and not args.get("data"):
            raise BadInputError(f"criterion {cfg.criterion!r} needs --data for calibration batches")
        out = Path(args["out"])
        if out.exists() and not out.is_dir():
            raise BadInputError(f"--out {out} exists and is not a directory")
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}
        return cls(args["model"], out, cfg, args.get("data"), parse_input_size(args.get("input_size")), args.get("num_classes"),
                   args.get("train_samples"), args.get("val_samples"), bool(args.get("latency", True)),
                   cfg.latency_threads, cfg.seed, bool(args.get("trust_code")), plain)


def _config_from_args(args: dict[str, Any]) -> PruneConfig:
    base: dict[str, Any] = {}
    if args.get("config_file"):
        path = Path(args["config_file"])
        try:
            base = PruneConfig.from_json(path.read_text()).to_dict()
        except OSError as exc:
            raise BadInputError(f"cannot read prune config {path}: {exc}") from exc
    if args.get("ratio") is not None and args.get("target") is not None:
        raise BadInputError("give --target or --ratio, not both")
    if args.get("ratio") is not None:
        base.update(target=None, ratio=args["ratio"])
    elif args.get("target") is not None:
        base.update(target=args["target"], ratio=None)
    elif "target" not in base and args.get("unstructured") is not None:
        base.update(target=None, ratio=0.0)  # only unstructured sparsity was asked for
    target = parse_target(base.get("target", "macs=0.5"))
    if args.get("round_to") is not None:
        base["round_to"] = args["round_to"]
    elif target is not None and target.kind == "latency" and "round_to" not in base:
        base["round_to"] = None  # chosen by measurement among 1 / 8 / 16
    if args.get("latency_table") is not None:
        base["latency_table"] = str(args["latency_table"])
        if args.get("allocation") is None:
            base["allocation"] = "latency-table"  # a table given is a table to use
    for key, flag in (("criterion", "criterion"), ("allocation", "allocation"), ("unstructured", "unstructured"),
                      ("unstructured_scope", "unstructured_scope"), ("seed", "seed"), ("latency_threads", "threads"),
                      ("schedule", "schedule"), ("steps", "steps"), ("epochs", "epochs"), ("lr", "lr")):
        if args.get(flag) is not None:
            base[key] = args[flag]
    if args.get("kd"):
        if not base.get("epochs"):
            raise BadInputError("--kd distils while training: give --epochs too")
        base["kd"] = True
    return PruneConfig.from_dict(base)


def run_job(job: PruneJob) -> dict[str, Any]:
    """Run the job; the output directory appears only when everything succeeded."""
    import torch

    from slimkit.compress.prune.api import prune_

    torch.manual_seed(job.seed)
    model, info, bundle = _load(job)
    x = torch.randn(1, *info.input_size)
    original = copy.deepcopy(model)
    before = _measure(model, x, bundle)
    report: dict[str, Any] = {"model": job.model, "input_size": list(info.input_size), "config": job.config.to_dict()}
    result = prune_(model, job.config, x, _calibration(job, bundle), data=bundle, progress=True)
    report.update({k: v for k, v in result.to_dict().items() if k not in ("before", "after")})
    report["finetune"] = result.training
    after = _measure(model, x, bundle)
    if job.latency:
        before["latency_ms"], after["latency_ms"], report["latency_conditions"] = _latency(original, model, x, job.threads)
    report.update(before=before, after=after)
    _write(job, model, info, report)
    return report


def _measure(model, x, bundle) -> dict[str, Any]:
    from slimkit.compress.prune.measure import count_macs, count_params
    from slimkit.engine import evaluate

    return {"macs": count_macs(model, x), "params": count_params(model), "latency_ms": None,
            "accuracy": evaluate(model, bundle.val)["top1"] if bundle else None}


def _load(job: PruneJob):
    from slimkit.data import load_data
    from slimkit.models import is_code_spec, load_model

    trust = job.trust_code or is_code_spec(job.model)  # code file named explicitly, or --trust-code
    classes = job.num_classes
    bundle = None
    if job.data and classes is None:
        classes = load_data(job.data, input_size=job.input_size or (3, 32, 32)).num_classes
    model, info = load_model(job.model, num_classes=classes, trust_code=trust)
    if job.input_size is not None:
        info.input_size = tuple(job.input_size)
    if job.data:
        bundle = load_data(job.data, input_size=info.input_size, train_samples=job.train_samples,
                           val_samples=job.val_samples, seed=job.seed, mean=info.mean, std=info.std)
        info.class_names = info.class_names or list(bundle.class_names)
    return model, info, bundle


def _calibration(job: PruneJob, bundle):
    from slimkit.compress.prune.criteria import Calibration
    from slimkit.compress.prune.training import calibration_batches

    if bundle is None:
        return None
    return Calibration(calibration_batches(bundle.train, job.config.calib_batches, seed=job.seed))


def _latency(before_model, after_model, x, threads: int):
    import onnxruntime

    from slimkit.compress.prune.measure import ort_latency_ms

    t = ort_latency_ms({"before": before_model, "after": after_model}, x, threads)
    conditions = {"runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider", "threads": threads,
                  "input": list(x.shape), "repetitions": t["after"]["repetitions"], "interleaved": True,
                  "before_iqr_ms": t["before"]["iqr"], "after_iqr_ms": t["after"]["iqr"]}
    return t["before"]["median"], t["after"]["median"], conditions


def _write(job: PruneJob, model, info, report: dict) -> None:
    from slimkit.models import save_model_dir
    from slimkit.utils.io import atomic_dir, atomic_write_json, save_resolved_args

    with atomic_dir(job.out) as tmp:
        inner = save_model_dir(model, info, tmp / "model", extra={"pruned": True, "target": report.get("target")})
        for item in inner.iterdir():
            shutil.move(str(item), tmp / item.name)
        inner.rmdir()
        atomic_write_json(tmp / "report.json", report)
        save_resolved_args(tmp, "prune", job.args)
