"""Shared by the benchmark scripts: the conditions every figure states, and one prune-and-check per model."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def environment(threads: int) -> dict[str, Any]:
    """CPU (model name, AVX-512 VNNI or not, cores), library versions, threads, and the machine's load."""
    import onnxruntime
    import torch
    import torchvision

    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                if line.startswith("model name")), platform.processor())
    from slimkit.utils.cpu import int8_path

    return {"cpu": cpu, "avx512_vnni": "avx512_vnni" in flags.split(), "avx2": "avx2" in flags.split(),
            "int8_path": int8_path(), "cpuid_masked": cpuid_masked(),
            "cpu_count": os.cpu_count(), "threads": threads, "load_average_1min": os.getloadavg()[0],
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnxruntime": onnxruntime.__version__, "commit": _commit()}


def cpuid_masked() -> bool:
    """True under benchmarks/avx2_path/run.sh: ORT runs its AVX2 kernels on a CPU that has AVX-512 VNNI."""
    return "cpuid_mask" in os.environ.get("LD_PRELOAD", "")


def path_tag(env: dict[str, Any]) -> str:
    """The int8 path a result file is named after; `-masked` where the path was forced by CPUID masking."""
    return env["int8_path"] + ("-masked" if env.get("cpuid_masked") else "")


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_results(name: str, payload: dict[str, Any]) -> Path:
    from slimkit.utils.io import atomic_write_json

    path = atomic_write_json(RESULTS / f"{name}.json", payload)
    print(f"wrote {path}")
    return path


def prune_half_macs(spec: str, side: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Random-init `spec` pruned to macs=0.5 (defaults: l2, global, round_to=8): the measured ratios, and whether
    the forward, the ONNX export checked in ONNX Runtime and an exact model-directory reload still work."""
    import torch

    from slimkit.compress.prune import PruneConfig, prune_
    from slimkit.deploy.onnx_export import export_onnx
    from slimkit.models import load_model, load_model_dir, save_model_dir
    from slimkit.profile import count_macs

    torch.manual_seed(0)
    row: dict[str, Any] = {"model": spec, "input_size": [3, side, side], "kwargs": kwargs}
    start = time.perf_counter()
    try:
        model, info = load_model(spec, num_classes=10, trust_code=True, **kwargs)
        info.input_size = (3, side, side)
        x = torch.randn(2, 3, side, side)
        before = {"macs": count_macs(model, x[:1]).total, "params": sum(p.numel() for p in model.parameters())}
        result = prune_(model, PruneConfig(target="macs=0.5"), x[:1])
        row.update(macs_ratio=count_macs(model, x[:1]).total / before["macs"],
                   params_ratio=sum(p.numel() for p in model.parameters()) / before["params"],
                   search_trials=len(result.trials), protected=result.protected, notes=result.notes,
                   macs_before=before["macs"], params_before=before["params"])
        with torch.no_grad():
            out = model.eval()(x)
        row["forward_ok"] = tuple(out.shape) == (2, 10)
        with tempfile.TemporaryDirectory() as tmp:
            report = export_onnx(model, (3, side, side), Path(tmp) / "model.onnx")
            row["onnx_max_abs_diff"] = report.check.max_abs_diff
            save_model_dir(model, info, Path(tmp) / "pruned")
            reloaded, _ = load_model_dir(Path(tmp) / "pruned", trust_code=True)
            with torch.no_grad():
                row["reload_exact"] = bool(torch.equal(reloaded.eval()(x), out))
        row["result"] = "pass" if abs(row["macs_ratio"] - 0.5) <= 0.05 and row["forward_ok"] and row["reload_exact"] \
            else "fail"
    except Exception as exc:  # a benchmark records what broke, and carries on with the next model
        row.update(result="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{spec}: {row['result']} macs ratio {row.get('macs_ratio', float('nan')):.3f} "
          f"params ratio {row.get('params_ratio', float('nan')):.3f} {row.get('error', '')}", flush=True)
    return row
