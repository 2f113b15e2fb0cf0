"""int8 on ONNX Runtime: plain ORT static quantization vs `slimkit quantize`, on models trained briefly on Fashion-MNIST.

For each model: train from random init on Fashion-MNIST (upsampled to SIZE, 3 channels), export fp32 ONNX
(verified), then
  plain   = ORT quant_pre_process + quantize_static (QDQ, per-channel int8 weights, uint8 activations, minmax)
  slimkit = slimkit.compress.quantize.quantize_ptq (CLE + bias correction on depthwise models, sensitivity
            fallback under --max-drop, speed guard)
and measure top-1 on the test split and latency of fp32 / plain / slimkit in ONE interleaved run
(slimkit.profile.timing.measure_interleaved; ORT CPU, batch 1, --threads intra-op threads).

    .venv/bin/python benchmarks/quant_bench.py                              # this CPU's int8 path
    sudo benchmarks/avx2_path/run.sh .venv/bin/python benchmarks/quant_bench.py   # the x86-avx2 path, forced

Trained weights are cached under --weights (shared by every CPU path, so each path quantizes the same models).
Writes OUT/quant_bench.json and .md (OUT defaults to runs/quant_bench/<int8 path>) and
benchmarks/results/quant_bench_<int8 path>.json and .md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from _common import RESULTS, environment, path_tag

MODELS = ("resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """A minimal IDX reader (Fashion-MNIST's format): magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fmnist(size, train_n: int, test_n: int, seed: int = 0):
    """(train, test) ImageTensorDatasets; slimkit's own fashion-mnist source is used when it exists."""
    from slimkit.data.base import ImageTensorDataset

    try:
        from slimkit.data import load_data

        bundle = load_data("fashion-mnist", size, train_samples=train_n, val_samples=test_n, seed=seed)
        return bundle.train, bundle.val
    except Exception as exc:  # the data source is being written in parallel; fall back to reading IDX here
        print(f"load_data('fashion-mnist') unavailable ({type(exc).__name__}); reading IDX files directly")
    rng = np.random.default_rng(seed)

    def split(prefix: str, n: int):
        x = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        keep = np.sort(rng.permutation(len(y))[:n])
        return ImageTensorDataset(torch.from_numpy(x[keep][:, None].copy()), torch.from_numpy(y[keep].astype(np.int64)), size)

    return split("train", train_n), split("t10k", test_n)


def train(name: str, train_set, epochs: int, batch: int, seed: int) -> nn.Module:
    import torchvision.models as tvm

    torch.manual_seed(seed)
    model = tvm.get_model(name, num_classes=10)
    # torchvision sizes EfficientNet's head init for 1000 classes (uniform +-1/sqrt(classes)); with 10 classes
    # the first loss is ~6.5 and one short epoch does not recover, so every head starts small instead.
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    model = model.to(memory_format=torch.channels_last)
    steps = epochs * ((len(train_set) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_set), generator=gen)
        start, total = time.time(), 0.0
        for i in range(0, len(order), batch):
            items = train_set.__getitems__(order[i : i + batch].tolist())
            x = torch.stack([a for a, _ in items]).to(memory_format=torch.channels_last)
            y = torch.stack([b for _, b in items])
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()
            sched.step()
            total += loss.item() * len(y)
        print(f"  {name} epoch {epoch + 1}/{epochs}: loss {total / len(order):.3f} ({time.time() - start:.0f} s)", flush=True)
    recalibrate_bn(model, train_set, batch)
    return model.to(memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, train_set, batch: int, batches: int = 30) -> None:
    """Recompute batch-norm statistics as plain averages: torchvision's MobileNetV3 uses momentum 0.01,
    so after one short epoch its running statistics are still near their initial values."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(batches):
        idx = list(range(i * batch, min(len(train_set), (i + 1) * batch)))
        if idx:
            model(torch.stack([x for x, _ in train_set.__getitems__(idx)]).to(memory_format=torch.channels_last))
    model.eval()


def plain_ort_int8(fp32: Path, out: Path, calib_x: np.ndarray) -> Path:
    """What a user gets from ONNX Runtime's documented recipe, with no slimkit logic."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from slimkit.compress.quantize.calib import TensorReader
    from slimkit.compress.quantize.ort_eval import quiet

    pre = out.with_suffix(".pre.onnx")
    with quiet():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), TensorReader(calib_x), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return out


def bench_model(name: str, args, train_set, test_set, out: Path) -> dict:
    from safetensors.torch import load_model, save_model

    from slimkit.compress.quantize.calib import QuantData
    from slimkit.compress.quantize.config import PTQConfig
    from slimkit.compress.quantize.ort_eval import accuracy
    from slimkit.compress.quantize.pipeline import quantize_ptq
    from slimkit.compress.quantize.speed_guard import OrtLatency
    from slimkit.deploy import export_onnx
    import torchvision.models as tvm

    size = tuple(args.size)
    weights = args.weights / f"{name}.safetensors"
    if weights.exists():
        model = tvm.get_model(name, num_classes=10)
        load_model(model, str(weights))
        model.eval()
        train_s = None
    else:
        start = time.time()
        model = train(name, train_set, args.epochs, args.batch, args.seed)
        train_s = time.time() - start
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, str(weights))
    calib_x = train_set.transform(train_set.images[: args.calib])  # train split: calibration never sees test images
    test_x, test_y = test_set.tensors()
    data = QuantData("fashion-mnist", calib_x.numpy(), test_x.numpy(), test_y.numpy())
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    export_onnx(model, size, work / "fp32.onnx", check_inputs=calib_x[:2])
    plain = plain_ort_int8(work / "fp32.onnx", work / "plain.int8.onnx", data.calib_x)
    screen = OrtLatency(size, threads=args.threads, repetitions=30, rounds=5, min_time_s=0.5)
    start = time.time()
    report = quantize_ptq(model, size, data, PTQConfig(max_drop=args.max_drop, calib_samples=args.calib, relu6=args.relu6),
                          work / "slimkit", latency=screen, final_latency=screen)
    slimkit_s = time.time() - start
    paths = {"fp32": work / "fp32.onnx", "plain": plain, "slimkit": work / "slimkit" / "model.int8.onnx"}
    timer = OrtLatency(size, threads=args.threads, repetitions=args.reps, rounds=args.rounds, min_time_s=args.min_time)
    timings = timer(paths)
    acc = {k: accuracy(p, data.val_x, data.val_y) for k, p in paths.items()}
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    big = latency_at(model, train_set, args, work) if args.latency_size else None
    return {
        "latency_at_size": big,
        "model": name, "train_s": train_s, "slimkit_quantize_s": slimkit_s, "accuracy": acc,
        "latency_ms": {k: t.to_dict() for k, t in timings.items()},
        "speedup": {k: timings["fp32"].median / timings[k].median for k in ("plain", "slimkit")},
        "size_bytes": sizes, "float_nodes": report["float_nodes"], "speed_guard": report["speed_guard"]["verdict"],
        "guard_trials": report["speed_guard"]["trials"], "preprocess": report["preprocess"],
        "sensitivity": {k: v for k, v in (report.get("sensitivity") or {}).items() if k != "ranking"},
        "conditions": timer.conditions(),
    }


def retime(results: list[dict], args) -> None:
    """Re-measure the saved fp32 / plain / slimkit files (no training, no quantizing), more rounds."""
    from slimkit.compress.quantize.speed_guard import OrtLatency

    for r in results:
        work = args.out / r["model"]
        sets = [(r, tuple(args.size), work)]
        if r.get("latency_at_size"):
            b = r["latency_at_size"]
            sets.append((b, tuple(b["input_size"]), work / f"at{b['input_size'][-1]}"))
        load = round(os.getloadavg()[0], 2)
        for target, size, d in sets:
            paths = {"fp32": d / "fp32.onnx", "plain": d / "plain.int8.onnx", "slimkit": d / "slimkit" / "model.int8.onnx"}
            reps = args.reps if d == work else args.big_reps
            timer = OrtLatency(size, threads=args.threads, repetitions=reps, rounds=args.rounds, min_time_s=args.min_time)
            t = timer(paths)
            target["latency_ms"] = {k: v.to_dict() for k, v in t.items()}
            target["speedup"] = {k: t["fp32"].median / t[k].median for k in ("plain", "slimkit")}
            target["conditions"] = timer.conditions()
        r.update(load_before=load, load_after=round(os.getloadavg()[0], 2), retimed=time.strftime("%Y-%m-%d %H:%M:%S"))
        print(f"{r['model']}: retimed {r['speedup']} / {r.get('latency_at_size', {}).get('speedup')}", flush=True)


def cpu_name(env: dict) -> str:
    masked = ", AVX2 path forced by CPUID masking" if env["cpuid_masked"] else ""
    return f"{env['cpu']}, {env['cpu_count']} cores, int8 path {env['int8_path']}{masked}"


def latency_at(model: nn.Module, train_set, args, work: Path) -> dict:
    """Latency only, at a deployment size (e.g. 224): same weights, calibrated on upsampled train images.

    Accuracy at this size means nothing for a model trained at SIZE, so slimkit runs without labels
    (no accuracy fallback) and only the speed guard decides what stays float.
    """
    from slimkit.compress.quantize.calib import QuantData
    from slimkit.compress.quantize.config import PTQConfig
    from slimkit.compress.quantize.pipeline import quantize_ptq
    from slimkit.compress.quantize.speed_guard import OrtLatency
    from slimkit.data.base import ImageTensorDataset
    from slimkit.deploy import export_onnx

    size = (3, args.latency_size, args.latency_size)
    n = args.latency_calib
    calib = ImageTensorDataset(train_set.images[:n], train_set.labels[:n], size).tensors()[0].numpy()
    d = work / f"at{args.latency_size}"
    d.mkdir(parents=True, exist_ok=True)
    # A model trained at 32x32 run at 224x224 is far outside its range (EfficientNet-B0's logits reach ~6e3),
    # where float32 rounding differences exceed 1e-4 of the output scale: the check runs at 1e-3 here.
    export_onnx(model, size, d / "fp32.onnx", check_inputs=torch.from_numpy(calib[:2]), atol=1e-3)
    plain = plain_ort_int8(d / "fp32.onnx", d / "plain.int8.onnx", calib)
    screen = OrtLatency(size, threads=args.threads, repetitions=20, rounds=5, min_time_s=1.0)
    report = quantize_ptq(model, size, QuantData("fashion-mnist", calib, calib[:8], None),
                          PTQConfig(max_drop=None, calib_samples=n, relu6=args.relu6, export_atol=1e-3), d / "slimkit", latency=screen,
                          final_latency=screen)
    paths = {"fp32": d / "fp32.onnx", "plain": plain, "slimkit": d / "slimkit" / "model.int8.onnx"}
    timer = OrtLatency(size, threads=args.threads, repetitions=args.big_reps, rounds=args.rounds, min_time_s=args.min_time)
    timings = timer(paths)
    return {"input_size": list(size), "latency_ms": {k: t.to_dict() for k, t in timings.items()},
            "speedup": {k: timings["fp32"].median / timings[k].median for k in ("plain", "slimkit")},
            "float_nodes": report["float_nodes"], "speed_guard": report["speed_guard"]["verdict"],
            "guard_trials": report["speed_guard"]["trials"], "conditions": timer.conditions()}


def markdown(results: list[dict], meta: dict) -> str:
    big = f"{meta['latency_size']}²" if meta.get("latency_size") else "big"
    lines = [
        f"Fashion-MNIST test split ({meta['test_n']} images), input {'x'.join(map(str, meta['size']))}, "
        f"trained {meta['epochs']} epoch(s) on {meta['train_n']} images from random init. Latency: ONNX Runtime "
        f"{meta['ort']} CPU, batch 1, {meta['threads']} thread, one interleaved run of the three models "
        f"({meta.get('rounds', 10)} rounds), median of >= {meta['reps']} calls (iqr in brackets). {meta['cpu']}; 1-min load average per model in the last "
        f"column. {big} columns: the same weights exported at "
        f"{meta.get('latency_size')}x{meta.get('latency_size')}, calibrated on {meta.get('latency_calib')} upsampled train images, "
        f"latency only (median of >= {meta.get('big_reps')} calls); slimkit runs its speed guard there without labels.",
        "",
        "| model | fp32 top-1 | plain int8 top-1 | slimkit int8 top-1 | fp32 ms | plain int8 speedup | slimkit int8 speedup | slimkit float nodes, guard | "
        f"{big} fp32 ms | {big} plain speedup | {big} slimkit speedup | {big} slimkit float nodes, guard | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, lat, sp, b = r["accuracy"], r["latency_ms"], r["speedup"], r.get("latency_at_size")
        row = (f"| {r['model']} | {a['fp32']:.2f} | {a['plain']:.2f} ({a['plain'] - a['fp32']:+.2f}) | "
               f"{a['slimkit']:.2f} ({a['slimkit'] - a['fp32']:+.2f}) | {lat['fp32']['median']:.2f} [{lat['fp32']['iqr']:.2f}] | "
               f"{sp['plain']:.2f}x | {sp['slimkit']:.2f}x | {len(r['float_nodes'])}, {r['speed_guard']} |")
        if b:
            row += (f" {b['latency_ms']['fp32']['median']:.1f} [{b['latency_ms']['fp32']['iqr']:.1f}] | {b['speedup']['plain']:.2f}x | "
                    f"{b['speedup']['slimkit']:.2f}x | {len(b['float_nodes'])}, {b['speed_guard']} |")
        else:
            row += " - | - | - | - |"
        lines.append(row + f" {r.get('load_before', '?')}-{r.get('load_after', '?')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default runs/quant_bench/<int8 path>)")
    parser.add_argument("--weights", type=Path, default=Path("runs/quant_bench/weights"))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, nargs=3, default=(3, 32, 32))
    parser.add_argument("--train-n", type=int, default=6000)
    parser.add_argument("--test-n", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-size", type=int, default=224, help="also time at this size (0: skip)")
    parser.add_argument("--latency-calib", type=int, default=64)
    parser.add_argument("--big-reps", type=int, default=60)
    parser.add_argument("--relu6", default="skip", choices=("skip", "clip", "relu"))
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds of the final timing")
    parser.add_argument("--retime-only", action="store_true", help="re-measure saved models, no training or quantizing")
    args = parser.parse_args()
    env = environment(args.threads)
    args.out = args.out or Path("runs/quant_bench") / path_tag(env)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    import onnxruntime as ort

    if args.retime_only:
        saved = json.loads((args.out / "quant_bench.json").read_text())
        retime(saved["results"], args)
        saved["meta"].update(reps=args.reps, big_reps=args.big_reps, rounds=args.rounds)
        (args.out / "quant_bench.json").write_text(json.dumps(saved, indent=2, default=str))
        publish(saved, args.out, env)
        return
    train_set, test_set = load_fmnist(tuple(args.size), args.train_n, args.test_n, args.seed)
    meta = {"size": list(args.size), "train_n": len(train_set), "test_n": len(test_set), "epochs": args.epochs,
            "threads": args.threads, "reps": args.reps, "ort": ort.__version__, "torch": torch.__version__,
            "rounds": args.rounds, "latency_size": args.latency_size, "latency_calib": args.latency_calib, "big_reps": args.big_reps,
            "cpu": cpu_name(env), "environment": env,
            "load_before": round(os.getloadavg()[0], 2)}
    previous = args.out / "quant_bench.json"
    # A rerun of some models keeps the others' results (each result carries its own load average).
    results = [r for r in json.loads(previous.read_text())["results"] if r["model"] not in args.models] \
        if previous.exists() else []
    for name in args.models:
        print(f"{name}: start", flush=True)
        load = round(os.getloadavg()[0], 2)
        results.append(bench_model(name, args, train_set, test_set, args.out))
        r = results[-1]
        r.update(load_before=load, load_after=round(os.getloadavg()[0], 2), relu6=args.relu6,
                 finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        print(f"{name}: acc {r['accuracy']}, speedup {r['speedup']}", flush=True)
        (args.out / "quant_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    meta["load_after"] = round(os.getloadavg()[0], 2)
    results.sort(key=lambda r: MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS))
    publish({"meta": meta, "results": results}, args.out, env)


def publish(saved: dict, out: Path, env: dict) -> None:
    """The run's JSON and table into OUT and into benchmarks/results/quant_bench_<int8 path>.*."""
    table = markdown(saved["results"], saved["meta"])
    for folder, stem in ((out, "quant_bench"), (RESULTS, f"quant_bench_{path_tag(env)}")):
        (folder / f"{stem}.json").write_text(json.dumps(saved, indent=2, default=str))
        (folder / f"{stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
