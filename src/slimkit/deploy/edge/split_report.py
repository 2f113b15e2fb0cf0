"""`deploy split` end to end: train the bottleneck, write the parts, measure bitstreams and baselines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.edge.split import DevicePart, SplitConfig
from slimkit.deploy.edge.split_build import train_split, write_parts
from slimkit.deploy.edge.split_measure import SplitRunner, compare, input_codec_rows, measure_split, naive_split_row, \
    top1_of

__all__ = ["deploy_split"]


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


def deploy_split(model: nn.Module, bundle: Any, cfg: SplitConfig, lam: float, train_config: Any, out: Path, *,
                 threads: int = 1, repetitions: int = 50, progress: bool = True) -> dict:
    """Train a split of `model` (unchanged) on bundle.train, write out/{device,server}, measure on bundle.val."""
    size = tuple(bundle.input_size)
    x, y = bundle.val.tensors()
    y_np = y.numpy()
    net, shapes = train_split(model, size, cfg, bundle, lam, train_config, progress=progress)
    write_parts(net, shapes, size, out, x[:32], {"lambda": lam, "bottleneck": cfg.channels})
    runner = SplitRunner(out, threads)
    split = measure_split(runner, x.numpy(), y_np)
    head, tail = _original_parts(model, size, cfg.at)
    baselines = [*input_codec_rows(model, bundle.val, y_np), naive_split_row(model, head, tail, x, y_np)]
    stored = list(bundle.val.images.shape[1:])
    report = {"at": shapes["at"], "cut_shape": shapes["cut_shape"], "code_shape": shapes["code_shape"],
              "lambda": lam, "bottleneck": cfg.channels, "split": split, "baselines": baselines,
              "original_top1": top1_of(model, x, y_np), "stored_image_shape": stored,
              "comparison": compare(split, baselines), "macs": _macs(model, DevicePart(net).eval(), size),
              "device_latency_ms": _device_ms(runner, x.numpy(), repetitions), "threads": threads,
              "exports": shapes["exports"], "train_history": shapes["train_history"]}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report

