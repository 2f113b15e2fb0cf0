"""`deploy split` end to end: per lambda, train the bottleneck, write the parts, measure real bitstreams;
against the input-codec and naive-split baselines, measured once."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.edge.split import DevicePart, SplitConfig
from slimkit.deploy.edge.split_build import train_split, write_parts
from slimkit.deploy.edge.split_html import write_split_report
from slimkit.deploy.edge.split_measure import SplitRunner, compare, input_codec_rows, measure_split, naive_split_row, \
    top1_of
from slimkit.models.resolve import ModelInfo
from slimkit.utils.io import atomic_dir, atomic_write_json

__all__ = ["deploy_split", "split_one", "baselines", "lambda_dirname"]


def _original_parts(model: nn.Module, input_size, at: str) -> tuple[nn.Module, nn.Module]:
    from slimkit.deploy.edge.graph import head_module, tail_module, trace_model

    traced = trace_model(model.eval(), tuple(input_size))
    cut = traced.find_cut(at, flag="--at")
    return head_module(traced, cut), tail_module(traced, cut)


def _macs(model: nn.Module, device: nn.Module, input_size) -> dict:
    from slimkit.profile.counter import count_macs

    example = torch.zeros(1, *input_size)
    whole, part = count_macs(model, example).total, count_macs(device, example).total
    return {"original": whole, "device": part, "device_fraction": part / whole if whole else None}


def _device_ms(runner: SplitRunner, x: np.ndarray, repetitions: int) -> dict:
    from slimkit.deploy.edge.split_codec import encode
    from slimkit.profile.timing import measure_interleaved

    one = x[:1]
    codes = runner.symbols(one)
    calls = {"device_model": lambda: runner.symbols(one), "range_encode": lambda: encode(codes[0], runner.tables)}
    return {k: t.to_dict() for k, t in measure_interleaved(calls, repetitions=repetitions, rounds=5).items()}


def split_one(model: nn.Module, bundle: Any, cfg: SplitConfig, lam: float, train_config: Any, out: Path, work: Path,
              parent_info: ModelInfo, *, threads: int = 1, repetitions: int = 50, progress: bool = True) -> dict:
    """Train one lambda's split (checkpointing in `work`), write it to `out` and measure it on bundle.val."""
    size = tuple(bundle.input_size)
    x, y = bundle.val.tensors()
    net, shapes = train_split(model, size, cfg, bundle, lam, train_config, work=work, progress=progress)
    write_parts(net, shapes, cfg, out, x[:32], model, parent_info, {"lambda": lam, "bottleneck": cfg.channels})
    runner = SplitRunner(out, threads)
    report = {"lambda": lam, "at": shapes["at"], "cut_shape": shapes["cut_shape"], "code_shape": shapes["code_shape"],
              "bottleneck": cfg.channels, "split": measure_split(runner, x.numpy(), y.numpy()),
              "macs": _macs(model, DevicePart(net).eval(), size),
              "device_latency_ms": _device_ms(runner, x.numpy(), repetitions), "threads": threads,
              "exports": shapes["exports"], "train_history": shapes["train_history"], "resumed": shapes["resumed"]}
    atomic_write_json(out / "report.json", report)
    return report


def baselines(model: nn.Module, bundle: Any, at: str) -> dict:
    """The input codecs and the naive 8-bit split, all fed to the original model, on bundle.val."""
    size = tuple(bundle.input_size)
    x, y = bundle.val.tensors()
    head, tail = _original_parts(model, size, at)
    rows = [*input_codec_rows(model, bundle.val, y.numpy()), naive_split_row(model, head, tail, x, y.numpy())]
    return {"rows": rows, "original_top1": top1_of(model, x, y.numpy()),
            "stored_image_shape": list(bundle.val.images.shape[1:])}


def lambda_dirname(lam: float) -> str:
    return f"lambda-{lam:g}"


def deploy_split(model: nn.Module, bundle: Any, cfg: SplitConfig, lambdas: Sequence[float], train_config: Any,
                 out: Path, *, info: ModelInfo | None = None, threads: int = 1, repetitions: int = 50,
                 progress: bool = True) -> dict:
    """Train and measure one split of `model` (unchanged) per lambda into out/lambda-L/, and the sweep's report.

    A lambda whose folder holds report.json is done and is read back, so a rerun on `out` resumes: training
    in progress checkpoints in out/.work/lambda-L/ after every epoch. Baselines are cached in out/.work."""
    info = dataclasses.replace(info or ModelInfo("module", type(model).__name__), input_size=tuple(bundle.input_size),
                               num_classes=bundle.num_classes, class_names=list(bundle.class_names))
    work = out / ".work"
    base = _cached(work / "baselines.json", lambda: baselines(model, bundle, cfg.at))
    points = []
    for lam in lambdas:
        folder = out / lambda_dirname(lam)
        if not (folder / "report.json").is_file():
            with atomic_dir(folder) as tmp:
                split_one(model, bundle, cfg, lam, train_config, tmp, work / folder.name, info, threads=threads,
                          repetitions=repetitions, progress=progress)
            shutil.rmtree(work / folder.name, ignore_errors=True)
        report = json.loads((folder / "report.json").read_text())
        report["comparison"] = compare(report["split"], base["rows"])
        atomic_write_json(folder / "report.json", report)
        points.append({k: report[k] for k in ("lambda", "split", "comparison", "macs", "device_latency_ms")})
    first = json.loads((out / lambda_dirname(lambdas[0]) / "report.json").read_text())
    summary = {"at": first["at"], "cut_shape": first["cut_shape"], "code_shape": first["code_shape"],
               "bottleneck": cfg.channels, "threads": threads, "lambdas": list(lambdas), "points": points,
               "baselines": base["rows"], "original_top1": base["original_top1"],
               "stored_image_shape": base["stored_image_shape"]}
    write_split_report(summary, out)
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    atomic_write_json(path, value)
    return value
