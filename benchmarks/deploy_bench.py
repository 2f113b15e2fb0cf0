"""Deploy runtimes side by side: ONNX Runtime, OpenVINO, LiteRT and ExecuTorch, fp32 and int8, at 224x224.

For each model (random init, batch norms re-estimated on Fashion-MNIST, then a Fashion-MNIST-trained
linear head on the frozen 224x224 features: training whole networks at 224 on 2 shared cores is too slow):

  prepare (shared CPU): `slimkit quantize`'s pipeline (QDQ int8, minmax, per-channel, CLE + bias
      correction on depthwise models, no speed guard or accuracy fallback) on CALIB train images; then
      slimkit.deploy.export_multi once per runtime: fp32 checked against PyTorch on real images, int8
      checked against that path's fake-quant reference, int8 top-1 on VAL test images in the runtime.
      A runtime that fails is recorded with its one-line error (the cell says why).
  time (exclusive CPU, `--phase time`): every artifact and PyTorch eager, interleaved, batch 1,
      at 1 and 2 threads (slimkit.profile.latency.time_artifacts).

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/deploy_bench.py --phase prepare --models resnet18
    flock -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/deploy_bench.py --phase time --models resnet18
    .venv/bin/python benchmarks/deploy_bench.py --phase table

Writes benchmarks/results/deploy_bench.json (merged per model) and docs/deploy-runtimes.md's table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "deploy_bench.json"
MODELS = {"resnet18": "tv:resnet18", "mobilenet_v2": "tv:mobilenet_v2", "mobilenet_v3_large": "tv:mobilenet_v3_large",
          "efficientnet_b0": "tv:efficientnet_b0", "emov2_1m": "emov2_1m"}
RUNTIMES = ("onnx", "openvino", "tflite", "executorch")
SIZE = (3, 224, 224)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=("prepare", "time", "table"), required=True)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "deploy_bench")
    p.add_argument("--head-train", type=int, default=300, help="Fashion-MNIST train images for the head")
    p.add_argument("--calib", type=int, default=64, help="calibration images (train split)")
    p.add_argument("--val", type=int, default=150, help="test images for top-1")
    p.add_argument("--repetitions", type=int, default=60)
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="prepare only these (the rest are recorded as not converted in this run, with the reason)")
    return p.parse_args()


def cpu() -> dict:
    from slimkit.profile.profiler import _cpu_name

    flags = open("/proc/cpuinfo").read()
    return {"cpu": _cpu_name(), "avx512_vnni": "avx512_vnni" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "cores": __import__("os").cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def versions() -> dict:
    from slimkit.deploy.litert_convert import converter_version
    from slimkit.deploy.runtime import runtime_status

    import subprocess

    from slimkit.deploy.tflite_export import converter_python

    out = {rt: runtime_status(rt)[0] for rt in RUNTIMES}
    python = converter_python()
    out["litert-torch"] = converter_version() if python is None else subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('litert-torch'))"], capture_output=True,
        text=True).stdout.strip()
    return out


@torch.no_grad()
def features(body: nn.Module, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([body(x[i : i + batch]) for i in range(0, len(x), batch)])


def build(name: str, data) -> nn.Module:
    """Random init, batch norms re-estimated on the data, a linear head trained on frozen features."""
    from slimkit.models import load_model

    torch.manual_seed(0)
    model, _ = load_model(MODELS[name], num_classes=10)
    x, y = data.train.tensors()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, min(len(x), 256), 32):
            model(x[i : i + 32])
    model.eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured = []
    hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    features(model, x)
    hook.remove()
    feats = torch.cat(captured)
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0).fit(((feats - mean) / std).numpy(), y.numpy())
    with torch.no_grad():  # fold the feature standardisation into the head
        w = torch.from_numpy(clf.coef_).float() / std
        head.weight.copy_(w)
        head.bias.copy_(torch.from_numpy(clf.intercept_).float() - (w * mean).sum(1))
    return model


def prepare(name: str, args, previous: dict | None = None) -> dict:
    from slimkit.compress.quantize.calib import QuantData
    from slimkit.compress.quantize.config import PTQConfig
    from slimkit.compress.quantize.pipeline import quantize_ptq
    from slimkit.data import load_data
    from slimkit.deploy.multi import Int8Source, export_multi

    work = args.work / name
    data = load_data("fashion-mnist", SIZE, train_samples=args.head_train, val_samples=args.val, seed=0)
    start = time.time()
    model = build(name, data)
    calib_x = data.train.tensors()[0][: args.calib].numpy()
    val_x, val_y = (t.numpy() for t in data.val.tensors())
    cfg = PTQConfig(max_drop=None, speed_guard=False, calib_samples=args.calib)
    quantize_ptq(model, SIZE, QuantData("fashion-mnist", calib_x, val_x, val_y), cfg, work / "quantize")
    int8 = Int8Source(work / "quantize" / "model.int8.onnx", calib_x, val_x, val_y, origin="quantize_ptq")
    from safetensors.torch import save_model

    save_model(model, str(work / "model.safetensors"))
    np.save(work / "x1.npy", val_x[:1])
    row = {"model": name, "spec": MODELS[name], "prepare_s": None, "runtimes": {}}
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(val_x[i : i + 50])) for i in range(0, len(val_x), 50)])
    row["pytorch_fp32_top1"] = float((logits.argmax(1).numpy() == val_y).mean() * 100)
    chosen = [r for r in args.runtimes.split(",") if r]
    for rt in RUNTIMES:
        kept = (previous or {}).get("runtimes", {}).get(rt, {})
        if rt not in chosen and kept and "not converted in this run" not in kept.get("error", ""):
            row["runtimes"][rt] = kept  # converted by an earlier --runtimes run of the same (seeded) model
            continue
        if rt not in chosen:
            row["runtimes"][rt] = {"error": f"not converted in this run (--runtimes {args.runtimes}): LiteRT and "
                                            "ExecuTorch conversion with int8 calibration takes 6-12 min per model "
                                            "on the shared 2-core machine"}
            continue
        t0 = time.time()
        try:
            data_rt = export_multi(model, SIZE, work / rt, [rt], check_x=calib_x[:4], int8=int8, latency=False)
            row["runtimes"][rt] = {"artifacts": data_rt["artifacts"], "convert_s": round(time.time() - t0, 1)}
        except Exception as exc:  # the cell records why it could not be produced
            row["runtimes"][rt] = {"error": _one_line(exc)}
            if "int8" in str(exc) or "fake-quant" in str(exc):  # fp32 may still stand alone: keep its cell
                try:
                    data_rt = export_multi(model, SIZE, work / rt, [rt], check_x=calib_x[:4], latency=False)
                    row["runtimes"][rt] = {"artifacts": data_rt["artifacts"], "int8_error": _one_line(exc),
                                           "convert_s": round(time.time() - t0, 1)}
                except Exception as exc2:
                    row["runtimes"][rt] = {"error": _one_line(exc2)}
        print(f"  {name} {rt}: {'ok' if 'artifacts' in row['runtimes'][rt] else row['runtimes'][rt]['error']} "
              f"({time.time() - t0:.0f} s)", flush=True)
    row["prepare_s"] = round(time.time() - start, 1)
    return row


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def time_model(name: str, row: dict, args) -> dict:
    from slimkit.models import load_model
    from slimkit.profile.latency import time_artifacts

    work = args.work / name
    artifacts = {}
    for rt, cell in row["runtimes"].items():
        for key, entry in cell.get("artifacts", {}).items():
            artifacts[key] = (entry["runtime"], work / rt / entry["file"])
    x = np.load(work / "x1.npy") if (work / "x1.npy").exists() else None
    if x is None:
        from slimkit.data import load_data

        x = load_data("fashion-mnist", SIZE, train_samples=1, val_samples=1).val.tensors()[0].numpy()
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        from safetensors.torch import load_model as load_weights

        model, _ = load_model(MODELS[name], num_classes=10)
        load_weights(model, str(work / "model.safetensors"))  # the very weights the artifacts hold
        model.eval()
        example = torch.from_numpy(x)

        def eager(m=model, example=example):
            with torch.no_grad():
                m(example)

        t = time_artifacts(artifacts, x, threads=threads, extra={"pytorch:fp32": eager},
                           repetitions=args.repetitions, rounds=6, min_time_s=1.5)
        out[str(threads)] = {k: v.to_dict() for k, v in t.items()}
        print(f"  {name} {threads} thread(s): " + ", ".join(f"{k} {v.median:.2f}" for k, v in t.items()), flush=True)
    return {"latency": out, "load_avg": open("/proc/loadavg").read().split()[:3], "cpu": cpu(),
            "cpu_lock": __import__("os").environ.get("BENCH_LOCK", "exclusive")}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"models": {}}


def save_results(results: dict) -> None:
    from slimkit.utils.io import atomic_write_json

    atomic_write_json(RESULTS, results)


def main() -> None:
    args = parse_args()
    names = [n for n in args.models.split(",") if n]
    results = load_results()
    results.setdefault("models", {})
    if args.phase == "prepare":
        for name in names:
            print(f"{name}: preparing", flush=True)
            results["models"][name] = {**prepare(name, args, results["models"].get(name)), "prepared_on": cpu()}
            results["conditions"] = {"input": "1x3x224x224", "batch": 1, "data": "fashion-mnist (upsampled, 3 channels)",
                                     "head_train": args.head_train, "calib": args.calib, "val": args.val,
                                     **cpu(), "versions": versions()}
            save_results(results)
    elif args.phase == "time":
        for name in names:
            results["models"][name]["timing"] = time_model(name, results["models"][name], args)
            save_results(results)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from deploy_table import write_table

        write_table(results, ROOT / "docs" / "deploy-runtimes.md")


if __name__ == "__main__":
    main()
