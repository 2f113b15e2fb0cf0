"""Structured-pruning benchmark on Fashion-MNIST: slimkit criteria vs Torch-Pruning used directly.

For a ResNet-18 (torchvision) and a MobileNetV2 (torchvision), each trained briefly from scratch on
a Fashion-MNIST subset, at 2x and 4x MACs reduction: prune with every slimkit criterion (global
allocation, channels rounded to 8) and with Torch-Pruning's MetaPruner as a new user would call it
(L2 group magnitude, uniform ratio found by bisection on MACs, no rounding); fine-tune each for the
same budget; report accuracy, MACs ratio, ONNX Runtime latency ratio (all variants of a model timed
interleaved in one run) and realized speedup / MACs reduction.

`--latency-table` runs the rows of allocation latency-table instead (l2 scores; widths chosen on the model's
per-layer ONNX Runtime latency table, built at the latency input 3x224x224): at macs=1/R and at latency=1/R,
next to the MACs-chosen global rows at macs=1/R and latency=1/R (bisection on measured latency, round_to 8),
each with the table's predicted latency ratio. Timing phases run alone (see _cpu_lock; SLIMKIT_QUIET).

    python benchmarks/prune_bench.py --out benchmarks/results/prune_bench.json
    SLIMKIT_QUIET=/work/wt/quiet.sh python benchmarks/prune_bench.py --latency-table \
        --out benchmarks/results/prune_bench_latency_table.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.criteria import Calibration
from slimkit.compress.prune.layer_table import LayerTable
from slimkit.compress.prune.measure import count_macs, ort_runner
from slimkit.compress.prune.training import calibration_batches, finetune
from slimkit.data import load_data
from slimkit.engine import evaluate as engine_evaluate
from slimkit.models import load_model
from slimkit.profile.timing import measure_interleaved


def evaluate(model, dataset) -> float:
    return engine_evaluate(model, dataset)["top1"]


CRITERIA = ["l1", "l2", "bn_scale", "taylor", "random", "lrp"]


def tp_direct(model: nn.Module, x: torch.Tensor, target: float) -> nn.Module:
    """Torch-Pruning's MetaPruner (L2, uniform ratio) with the ratio bisected to meet the MACs target."""
    import torch_pruning as tp

    base = count_macs(model, x)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        ratio = (lo + hi) / 2
        trial = copy.deepcopy(model)
        head = [m for m in trial.modules() if isinstance(m, nn.Linear)][-1:]  # keep the 10 logits
        tp.pruner.MetaPruner(trial, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                             pruning_ratio=ratio, ignored_layers=head).step()
        macs = count_macs(trial, x) / base
        if best is None or abs(macs - target) < abs(best[1] - target):
            best = (trial, macs)
        lo, hi = (ratio, hi) if macs > target else (lo, ratio)
    return best[0]


def run(args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", input_size=(3, args.side, args.side), train_samples=args.train,
                     val_samples=args.val, seed=0)
    calib = Calibration(calibration_batches(data.train, 4))
    lat_x = torch.randn(1, 3, args.latency_side, args.latency_side)
    x = torch.randn(1, 3, args.side, args.side)
    results = {"conditions": _conditions(args), "rows": []}
    for spec in args.models:
        model, _ = load_model(spec, num_classes=10)
        t0 = time.time()
        finetune(model, data.train, args.epochs, lr=args.lr, seed=0)
        base_acc, base_macs = evaluate(model, data.val), count_macs(model, lat_x)
        variants = {"original": model}
        rows = [{"model": spec, "method": "original", "reduction": 1, "accuracy": base_acc, "macs_ratio": 1.0}]
        for reduction in args.reductions:
            for method in CRITERIA + ["torch-pruning"]:
                pruned = copy.deepcopy(model)
                if method == "torch-pruning":
                    pruned = tp_direct(pruned, x, 1 / reduction)
                else:
                    prune_(pruned, PruneConfig(target=f"macs={1 / reduction}", criterion=method), x, calib)
                finetune(pruned, data.train, args.ft_epochs, lr=args.lr / 2, seed=1)
                key = f"{method}@{reduction}x"
                variants[key] = pruned
                rows.append({"model": spec, "method": method, "reduction": reduction, "accuracy": evaluate(pruned, data.val),
                             "macs_ratio": count_macs(pruned, lat_x) / base_macs})
                print(f"{spec} {key}: acc {rows[-1]['accuracy']:.4f} macs {rows[-1]['macs_ratio']:.3f}", flush=True)
        timings = measure_interleaved({k: ort_runner(m, lat_x, args.threads) for k, m in variants.items()},
                                      warmup=3, repetitions=args.reps, rounds=args.rounds)
        _add_latency(rows, timings)
        results["rows"] += rows
        print(f"{spec} done in {time.time() - t0:.0f}s", flush=True)
    return results


LT_METHODS = {  # row name -> PruneConfig arguments at reduction R (l2 scores everywhere)
    "global@macs": lambda r, t: dict(target=f"macs={1 / r}"),
    # the table's rows keep the 10% floor they were measured with; the floor25 row is the default since then
    "latency-table@macs": lambda r, t: dict(target=f"macs={1 / r}", allocation="latency-table", latency_table=t,
                                            max_layer_prune=0.9),
    "global@latency": lambda r, t: dict(target=f"latency={1 / r}", round_to=8, closest=True),
    "latency-table@latency": lambda r, t: dict(target=f"latency={1 / r}", allocation="latency-table", latency_table=t,
                                               closest=True, max_layer_prune=0.9),
    # Side rows: the MACs-chosen ranking at widths of 16 (the kernels' blocking here), and the table with a
    # higher floor per layer (every group keeps >= 25%).
    "global-r16@macs": lambda r, t: dict(target=f"macs={1 / r}", round_to=16),
    "latency-table-floor25@macs": lambda r, t: dict(target=f"macs={1 / r}", allocation="latency-table",
                                                    latency_table=t, max_layer_prune=0.75),
}
MAIN_METHODS = ["global@macs", "latency-table@macs", "global@latency", "latency-table@latency"]


def latency_table_rows(args) -> dict:
    """Rows of allocation latency-table against the MACs-chosen global allocation, same conditions."""
    from _cpu_lock import CpuLock

    from slimkit.compress.prune.layer_ops import prepare_layer_table

    lock = CpuLock()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", input_size=(3, args.side, args.side), train_samples=args.train,
                     val_samples=args.val, seed=0)
    lat_x = torch.randn(1, 3, args.latency_side, args.latency_side)
    results = {"conditions": _conditions(args), "rows": []}
    for spec in args.models:
        model, _ = load_model(spec, num_classes=10)
        if not args.time_only:
            finetune(model, data.train, args.epochs, lr=args.lr, seed=0)
        table_path = args.table_dir / f"{spec.replace(':', '_')}_{args.latency_side}_t{args.threads}.json"
        if not table_path.exists():
            prepared = prepare_layer_table(model.eval(), lat_x, args.threads)
            with lock.timing(f"{spec} table"):
                table = prepared.time()
            table.save(table_path)
        table = LayerTable.load(table_path)
        variants, rows = {"original": model}, [_row(spec, "original", 1, model, model, data, lat_x, table, args)]
        for reduction in args.reductions:
            for method in args.methods:
                pruned = copy.deepcopy(model)
                cfg = PruneConfig(criterion="l2", latency_threads=args.threads, **LT_METHODS[method](reduction, str(table_path)))
                if cfg.parsed_target.kind == "latency":
                    with lock.timing(f"{spec} {method}@{reduction}x"):
                        result = prune_(pruned, cfg, lat_x)
                else:
                    result = prune_(pruned, cfg, lat_x)
                if not args.time_only:
                    finetune(pruned, data.train, args.ft_epochs, lr=args.lr / 2, seed=1)
                variants[f"{method}@{reduction}x"] = pruned
                rows.append(_row(spec, method, reduction, model, pruned, data, lat_x, table, args, result))
                print(f"{spec} {method}@{reduction}x: macs {rows[-1]['macs_ratio']:.3f} predicted latency "
                      f"{rows[-1]['predicted_latency_ratio']:.3f}", flush=True)
        runners = {k: ort_runner(m, lat_x, args.threads) for k, m in variants.items()}
        with lock.timing(f"{spec} final"):
            timings = measure_interleaved(runners, warmup=3, repetitions=args.reps, rounds=args.rounds)
        _add_latency(rows, timings)
        results["rows"] += rows
    from _common import environment

    results["environment"] = environment(args.threads)
    results["conditions"].update(table_dir=str(args.table_dir), time_only=args.time_only,
                                 criterion="l2 (weights after training; random init with --time-only)")
    return results


def _row(spec, method, reduction, model, pruned, data, lat_x, table, args, result=None) -> dict:
    row = {"model": spec, "method": method, "reduction": reduction,
           "accuracy": None if args.time_only else evaluate(pruned, data.val),
           "macs_ratio": count_macs(pruned, lat_x) / count_macs(model, lat_x),
           "predicted_latency_ratio": table.predict_model_ms(pruned, lat_x) / table.whole_ms}
    if result is not None:
        row["target"], row["prune_trials"] = result.target, result.trials
        row["kept"] = {n: k["after"] for n, k in result.kept.items() if k["after"] != k["before"]}
    return row


def _add_latency(rows: list[dict], timings: dict) -> None:
    for row in rows:
        key = "original" if row["method"] == "original" else f"{row['method']}@{row['reduction']}x"
        t = timings[key]
        row.update(latency_ms=t.median, latency_iqr_ms=t.iqr, repetitions=t.repetitions,
                   latency_ratio=t.median / timings["original"].median)
        row["speedup_over_macs_reduction"] = (1 / row["latency_ratio"]) / (1 / row["macs_ratio"])


def _conditions(args) -> dict:
    import onnxruntime
    import torch_pruning

    return {"data": f"fashion-mnist train {args.train} / val {args.val} images at {args.side}x{args.side} (3ch)",
            "train": f"{args.epochs} epochs SGD from scratch; fine-tune {args.ft_epochs} epochs after pruning",
            "latency": f"onnxruntime {onnxruntime.__version__} CPU, {args.threads} thread(s), batch 1, "
                       f"3x{args.latency_side}x{args.latency_side}, interleaved, {args.rounds} rounds, median",
            "torch": torch.__version__, "torch_pruning": torch_pruning.__version__, "cpu": platform.processor() or platform.machine(),
            "note": "shared 2-core machine: other jobs ran at the same time; compare ratios within a model only"}


def markdown(results: dict) -> str:
    lines = ["| model | method | MACs reduction | accuracy | MACs ratio | ORT latency ratio (IQR ms) | speedup / MACs "
             "reduction | table-predicted latency ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        pred = f"{r['predicted_latency_ratio']:.3f}" if "predicted_latency_ratio" in r else "-"
        lines.append(f"| {r['model']} | {r['method']} | {r['reduction']}x | {acc} | {r['macs_ratio']:.3f} | "
                     f"{r['latency_ratio']:.3f} ({r['latency_iqr_ms']:.2f}) | {r['speedup_over_macs_reduction']:.2f} "
                     f"| {pred} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tv:resnet18", "tv:mobilenet_v2"])
    p.add_argument("--reductions", nargs="+", type=int, default=[2, 4])
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--latency-side", type=int, default=224)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--ft-epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/prune_bench.json"))
    p.add_argument("--latency-table", action="store_true", help="the rows of allocation latency-table (see above)")
    p.add_argument("--methods", nargs="+", default=MAIN_METHODS, choices=list(LT_METHODS))
    p.add_argument("--table-dir", type=Path, default=Path("runs/prune_bench_tables"))
    p.add_argument("--time-only", action="store_true", help="random init, no training: latency rows without accuracy")
    args = p.parse_args()
    results = latency_table_rows(args) if args.latency_table else run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
