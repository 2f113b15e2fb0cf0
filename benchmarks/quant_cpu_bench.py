"""int8 per CPU path (issue 10's table): plain ORT QDQ, plain ORT reduce_range and `slimkit quantize`, random init.

For each torchvision model (random init, 10 classes, seed 0) at 3xSIZExSIZE:
  plain     = ORT quant_pre_process + quantize_static (QDQ, per-channel s8 weights, u8 activations, minmax)
  plain_rr  = the same with reduce_range=True (7-bit weights)
  slimkit   = slimkit.compress.quantize.quantize_ptq (--target-cpu auto, no labels: the speed guard decides
              what stays float, from ORT's op profiler and interleaved re-measurement)
All three calibrate on the same images (slimkit's `synthetic` source, the train split of
`slimkit quantize --calib-data synthetic`); the error is the relative max logit error
max|int8 - fp32| / max|fp32| on held-out synthetic images (the val split).

Two phases, so the builds can share the machine and only the timing needs it alone:
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/quant_cpu_bench.py --phase build
    timeout 900 flock -w 600 -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/quant_cpu_bench.py --phase time
Timing: fp32 and the three int8 models in ONE interleaved run per model (ORT CPU, batch 1, 1 thread).
Writes benchmarks/results/quant_cpu_bench_<int8 path>.json (one file per CPU path) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, path_tag

MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
VARIANTS = ("plain", "plain_rr", "slimkit")


def _plain(pre: Path, out: Path, calib: np.ndarray, reduce_range: bool) -> Path:
    """ONNX Runtime's documented recipe, nothing of slimkit's but the calibration reader."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from slimkit.compress.quantize.calib import TensorReader
    from slimkit.compress.quantize.ort_eval import quiet

    with quiet():
        quantize_static(str(pre), str(out), TensorReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        calibrate_method=CalibrationMethod.MinMax)
    return out


def build(name: str, size: int, calib_n: int, work: Path) -> dict:
    import torchvision
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from slimkit.compress.quantize.calib import load_quant_data
    from slimkit.compress.quantize.config import PTQConfig
    from slimkit.compress.quantize.ort_eval import quiet
    from slimkit.compress.quantize.pipeline import quantize_ptq
    from slimkit.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    data = load_quant_data(f"synthetic:{calib_n + 16}", (3, size, size), calib_samples=calib_n, val_samples=16)
    work.mkdir(parents=True, exist_ok=True)
    export_onnx(model, (3, size, size), work / "fp32.onnx")
    with quiet():
        quant_pre_process(str(work / "fp32.onnx"), str(work / "pre.onnx"), skip_symbolic_shape=True)
    _plain(work / "pre.onnx", work / "plain.onnx", data.calib_x, False)
    _plain(work / "pre.onnx", work / "plain_rr.onnx", data.calib_x, True)
    report = quantize_ptq(model, (3, size, size), data, PTQConfig(max_drop=None, calib_samples=calib_n), work / "slimkit")
    np.save(work / "held_out.npy", data.val_x)
    guard = report["speed_guard"]
    return {"model": name, "input": [3, size, size], "calib_samples": len(data.calib_x), "held_out": len(data.val_x),
            "slimkit": {"int8_format": report["int8_format"]["weights"], "float_nodes": len(report["float_nodes"]),
                        "float_groups": sorted({w.split(":")[1].split()[0] for w in report["float_nodes"].values()
                                                if w.startswith("speed:")}),
                        "guard_verdict": guard["verdict"], "guard_speedup": guard["speedup"],
                        "guard_trials": guard["trials"], "guard_profile": guard["profile"],
                        "exact_check": report["int8_check"]["passed"]}}


def paths(work: Path) -> dict[str, Path]:
    return {"fp32": work / "fp32.onnx", "plain": work / "plain.onnx", "plain_rr": work / "plain_rr.onnx",
            "slimkit": work / "slimkit" / "model.int8.onnx"}


def measure(row: dict, work: Path, reps: int, rounds: int) -> None:
    """Error on the held-out images and speedups from one interleaved run, into `row`."""
    from slimkit.compress.quantize.ort_eval import predict
    from slimkit.compress.quantize.speed_guard import OrtLatency

    held_out = np.load(work / "held_out.npy")
    p = paths(work)
    ref = predict(p["fp32"], held_out)
    row["rel_max_logit_error"] = {k: float(np.max(np.abs(predict(p[k], held_out) - ref)) / np.max(np.abs(ref)))
                                  for k in VARIANTS}
    timer = OrtLatency(row["input"], repetitions=reps, rounds=rounds, min_time_s=1.0)
    row["load_before"] = round(os.getloadavg()[0], 2)
    t = timer(p)
    row["load_after"] = round(os.getloadavg()[0], 2)
    row["latency_ms"] = {k: v.to_dict() for k, v in t.items()}
    row["speedup"] = {k: t["fp32"].median / t[k].median for k in VARIANTS}
    row["conditions"] = timer.conditions()


def table(rows: list[dict], env: dict) -> str:
    lines = ["| model | CPU (int8 path) | plain ORT QDQ | plain ORT reduce_range | slimkit quantize | slimkit float groups | load |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "speedup" not in r:
            continue
        cells = [f"{r['speedup'][k]:.2f}x, {r['rel_max_logit_error'][k]:.3f}" for k in VARIANTS]
        groups = ", ".join(r["slimkit"]["float_groups"]) or "none"
        lines.append(f"| {r['model']} | {env['cpu']} ({path_tag(env)}) | {' | '.join(cells)} | {groups} | "
                     f"{r['load_before']}-{r['load_after']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("build", "time", "all"), default="all")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("runs/quant_cpu_bench"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment(1)
    out = RESULTS / f"quant_cpu_bench_{path_tag(env)}.json"
    saved = json.loads(out.read_text()) if out.exists() else {"rows": []}
    rows = {r["model"]: r for r in saved["rows"]}
    for name in args.models.split(","):
        work = args.work / name
        if args.phase in ("build", "all"):
            rows[name] = build(name, args.size, args.calib, work)
            print(f"{name}: built, slimkit float groups {rows[name]['slimkit']['float_groups']}", flush=True)
        if args.phase in ("time", "all"):
            measure(rows[name], work, args.reps, args.rounds)
            print(f"{name}: speedup {rows[name]['speedup']}, error {rows[name]['rel_max_logit_error']}", flush=True)
        ordered = [rows[m] for m in MODELS if m in rows]
        from slimkit.utils.io import atomic_write_json

        atomic_write_json(out, {"environment": env, "rows": ordered, "size": args.size})
    print(table([rows[m] for m in MODELS if m in rows], env))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
