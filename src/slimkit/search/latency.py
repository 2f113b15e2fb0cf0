"""Latency tables built on the machine the model will run on (MnasNet's measured latency, without a phone farm).

Every distinct layer group a space can produce (the stem, each block shape, the head, at every width and
resolution) is exported on its own, run in ONNX Runtime at batch 1, and timed interleaved and repeated.
A network's latency is predicted as the sum of its parts minus the per-call overhead each standalone part
carried, then corrected by a line fitted on a few whole subnets measured the same way: what a sum of
blocks misses (memory traffic between blocks, the graph's own overhead) shows up there.
"""

from __future__ import annotations

import itertools
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from slimkit.errors import BadInputError
from slimkit.search.child import ChildNet, MBBlock, _conv_bn, child_spec
from slimkit.search.irmb import IRMBBlock
from slimkit.search.space import Arch, SearchSpace

__all__ = ["space_parts", "arch_parts", "part_module", "export_modules", "module_runners", "time_runners",
           "measure_modules", "measure_archs", "measure_children", "condition_mismatches", "error_summary", "fit_line"]

log = logging.getLogger(__name__)

def _down(h: int, stride: int) -> int:
    return (h - 1) // stride + 1  # conv with padding k//2: the same for every odd kernel


def arch_parts(space: SearchSpace, arch: Arch) -> list[str]:
    """The table keys whose sum is `arch`'s network: stem, one key per block, head (iRMB spaces: `irmb:` blocks
    with their attention and head width, and SiLU stem and head)."""
    spec = child_spec(space, arch)
    irmb = space.block == "irmb"
    act = "-silu" if irmb else ""
    h = _down(arch.resolution, space.stem_stride)
    keys = [f"stem:{space.in_chans}-{spec['stem']}-s{space.stem_stride}{act}@{arch.resolution}"]
    for cin, hidden, cout, k, stride, residual, *attn in spec["blocks"]:
        shape = f"{cin}-{hidden}-{cout}-k{k}-s{stride}-r{int(residual)}"
        keys.append(f"irmb:{shape}-a{int(attn[0])}-h{space.head_dim}@{h}" if irmb else f"block:{shape}@{h}")
        h = _down(h, stride)
    last = spec["blocks"][-1][2]
    keys.append(f"head:{last}-{space.head_channels}-{space.num_classes}{act}@{h}")
    return keys


def space_parts(space: SearchSpace) -> list[str]:
    """Every key any child of `space` can need (the uniform children of each (width, resolution, k, e, attention)
    cover every block shape: a block's shape depends on its own choices and the global width/resolution only)."""
    keys: dict[str, None] = {}
    depths = [max(s.depths) for s in space.stages]
    for w, r, k, e, on in itertools.product(space.widths, space.resolutions, space.kernels, space.expands,
                                            (False, True) if space.block == "irmb" else (None,)):
        attention = None if on is None else space.attention_for(depths, lambda opts, on=on: on if on in opts else opts[0])
        arch = Arch(resolution=r, width=w, depths=depths, kernels=[[k] * d for d in depths],
                    expands=[[e] * d for d in depths], attention=attention)
        keys.update(dict.fromkeys(arch_parts(space, arch)))
    return list(keys)


class _Head(nn.Module):
    def __init__(self, cin: int, head: int, classes: int, kind: str = "mbconv"):
        super().__init__()
        self.conv = nn.Sequential(*_conv_bn(cin, head, 1, 1, kind=kind))
        self.classifier = nn.Linear(head, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


class _Call(nn.Module):
    """The cheapest graph ONNX Runtime will run: what one session.run costs without any work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def part_module(key: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """The module a table key times and its input (C, H, W)."""
    kind, rest = key.split(":", 1)
    shape, h = rest.rsplit("@", 1)
    h = int(h)
    fields = shape.split("-")
    block = "irmb" if fields[-1] == "silu" else "mbconv"
    if kind == "stem":
        cin, cout, stride = int(fields[0]), int(fields[1]), int(fields[2][1:])
        return nn.Sequential(*_conv_bn(cin, cout, 3, stride, kind=block)), (cin, h, h)
    if kind in ("block", "irmb"):
        cin, hidden, cout = (int(v) for v in fields[:3])
        k, stride, residual = int(fields[3][1:]), int(fields[4][1:]), fields[5] == "r1"
        if kind == "irmb":
            attention, head_dim = fields[6] == "a1", int(fields[7][1:])
            return IRMBBlock(cin, hidden, cout, k, stride, residual, attention, head_dim), (cin, h, h)
        return MBBlock(cin, hidden, cout, k, stride, residual), (cin, h, h)
    if kind == "head":
        return _Head(*(int(v) for v in fields[:3]), kind=block), (int(fields[0]), h, h)
    if kind == "call":
        return _Call(), (int(fields[0]), h, h)
    raise BadInputError(f"unknown latency-table key {key!r}")


@dataclass
class Measured:
    median_ms: float
    iqr_ms: float
    p90_ms: float
    min_ms: float
    repetitions: int

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms,
                "repetitions": self.repetitions}


def export_modules(modules: dict[str, tuple[nn.Module, tuple[int, int, int]]], directory: str | Path,
                   progress: Any = None) -> dict[str, Path]:
    """Each module exported (verified) to DIRECTORY/m<i>.onnx; a file already there is kept (an export-only
    pass can run on a busy machine and the timing later, alone)."""
    from slimkit.deploy.onnx_export import export_onnx

    paths = {}
    for i, (name, (module, size)) in enumerate(modules.items()):
        paths[name] = Path(directory) / f"m{i}.onnx"
        if not paths[name].is_file():
            export_onnx(module.eval(), size, paths[name], dynamic_batch=False)
        if progress is not None:
            progress()
    return paths


def module_runners(modules: dict[str, tuple[nn.Module, tuple[int, int, int]]], threads: int, *,
                   progress: Any = None, export_dir: str | Path | None = None) -> dict[str, Any]:
    """Export each module (verified; reusing `export_dir`'s files) and open it in ONNX Runtime: name ->
    zero-argument runner on a fixed input. Exporting is the slow half of a table build; it is apart from the
    timing so a caller can hold the CPU alone for the timing only."""
    from slimkit.deploy.runtime import open_runner

    runners = {}
    with tempfile.TemporaryDirectory(prefix="slimkit-lat-") as tmp:
        paths = export_modules(modules, export_dir or tmp, progress)
        for i, (name, (_, size)) in enumerate(modules.items()):
            run = open_runner("onnx", paths[name], threads)  # the session holds the graph: the file may go
            x = np.random.default_rng(i).standard_normal((1, *size)).astype(np.float32)
            runners[name] = lambda run=run, x=x: run(x)
    return runners


def time_runners(runners: dict[str, Any], *, repetitions: int = 40, rounds: int = 5) -> dict[str, Measured]:
    """Time runners interleaved round by round (median, IQR, p90, min per call in ms)."""
    from slimkit.profile.timing import measure_interleaved

    timings = measure_interleaved(runners, warmup=5, repetitions=repetitions, rounds=rounds)
    return {k: Measured(t.median, t.iqr, t.p90, t.min, t.repetitions) for k, t in timings.items()}


def measure_modules(modules: dict[str, tuple[nn.Module, tuple[int, int, int]]], threads: int, *,
                    repetitions: int = 40, rounds: int = 5, progress: Any = None,
                    export_dir: str | Path | None = None) -> dict[str, Measured]:
    """Export each module (verified; reusing `export_dir`'s files) and time all of them in ONNX Runtime,
    interleaved round by round."""
    runners = module_runners(modules, threads, progress=progress, export_dir=export_dir)
    return time_runners(runners, repetitions=repetitions, rounds=rounds)


def _cpu() -> dict[str, Any]:
    from slimkit.profile.profiler import _cpu_name
    from slimkit.utils.cpu import cpu_flags

    flags = cpu_flags()
    return {"cpu": _cpu_name(), "avx512": "avx512f" in flags, "vnni": bool({"avx512_vnni", "avx_vnni"} & flags)}


def conditions(threads: int, repetitions: int, rounds: int) -> dict[str, Any]:
    import onnxruntime

    return {**_cpu(), "threads": int(threads), "runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "batch": 1, "repetitions": repetitions, "rounds": rounds,
            "statistic": "median per call (ms), spread = IQR"}


def condition_mismatches(stored: dict[str, Any], threads: int | None = None) -> list[str]:
    """How this machine differs from where the table was measured (empty when it matches)."""
    here = {**_cpu(), "threads": int(threads or torch.get_num_threads())}
    import onnxruntime

    here["onnxruntime"] = onnxruntime.__version__
    return [f"{k}: table {stored.get(k)!r}, here {here[k]!r}"
            for k in ("cpu", "avx512", "vnni", "threads", "onnxruntime") if stored.get(k) != here[k]]


def measure_children(space: SearchSpace, archs: Iterable[Arch], threads: int, **kw: Any) -> list[Measured]:
    """Whole children exported and timed together (random weights: latency does not depend on them)."""
    archs = list(archs)
    torch.manual_seed(0)
    mods = {str(i): (ChildNet(child_spec(space, a)), (space.in_chans, a.resolution, a.resolution))
            for i, a in enumerate(archs)}
    got = measure_modules(mods, threads, **kw)
    return [got[str(i)] for i in range(len(archs))]


def measure_archs(space: SearchSpace, archs: Iterable[Arch], threads: int, statistic: str = "median",
                  **kw: Any) -> list[float]:
    """Measured latency (ms; median or min per call) of whole children."""
    return [getattr(m, f"{statistic}_ms") for m in measure_children(space, archs, threads, **kw)]


def calibration_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    rng = random.Random(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(max(0, n - 2))]


def error_summary(predicted: list[float], measured: list[float]) -> dict[str, Any]:
    rel = np.array(predicted) / np.array(measured) - 1.0
    return {"n": len(rel), "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.10)), "mean_abs_pct": float(np.mean(np.abs(rel)) * 100),
            "p95_abs_pct": float(np.percentile(np.abs(rel), 95) * 100), "max_abs_pct": float(np.max(np.abs(rel)) * 100),
            "rel_errors": [round(float(v), 4) for v in rel]}


def fit_line(raw: list[float], measured: list[float]) -> tuple[float, float]:
    """Least-squares measured = scale * raw + offset (offset: the graph-level cost blocks miss)."""
    scale, offset = np.polyfit(np.array(raw), np.array(measured), 1)
    return float(scale), float(offset)
