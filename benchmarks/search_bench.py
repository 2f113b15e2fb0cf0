"""slimkit search figures on the built-in `mbv2` space, sized for a shared 2-core CPU (about 20 min in all).

Parts (each merges its section into benchmarks/results/search_bench.json):

  latency  the ONNX Runtime latency table of mbv2 (1 thread, batch 1, every part timed interleaved),
           its correction fitted on 12 children, then predicted vs measured on 50 other sampled children.
           Timing: run it alone under the exclusive lock:
             flock -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/search_bench.py latency
  train    the supernet on a Fashion-MNIST subset at 24/32 px (sandwich rule, in-place distillation,
           delayed shrinking), then children's top-1 without retraining (BN recalibrated) against the same
           architectures trained from scratch for the same epochs (BigNAS's claim).
  proxies  Kendall tau of synflow, grad-norm, NASWOT, MACs and params against 30 children's top-1.
  search   evolutionary search (MnasNet reward, w=-0.07) at a target set from the table, winners measured.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/search_bench.py train
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/search_bench.py search
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, environment, write_results

WORK = Path("/tmp/slimkit_search_bench")
TRAIN_SAMPLES, VAL_SAMPLES, EPOCHS = 3000, 1000, 4


def _merge(part: str, payload: dict) -> None:
    path = RESULTS / "search_bench.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[part] = payload
    write_results("search_bench", data)


def latency_part() -> dict:
    from slimkit.search.space import load_space
    from slimkit.search.table import build_table, refit

    space = load_space("mbv2")
    start = time.perf_counter()
    table = build_table(space, 1, repetitions=60, rounds=10, calibrate=12, validate=50)
    out = {"environment": environment(1), "parts": len(table.entries), "seconds": round(time.perf_counter() - start, 1)}
    for stat in ("min", "median"):  # the same measurements, each statistic fitted and validated on its own
        refit(table, stat)
        out[stat] = {"overhead_ms": table.overhead_ms, "scale": table.scale, "offset_ms": table.offset_ms,
                     "fit_errors": table.calibration["fit_errors"], "validation": table.calibration["validation"]}
    best = min(("min", "median"), key=lambda s: out[s]["validation"]["mean_abs_pct"])
    refit(table, best).save(WORK / "latency_table.json")
    out["table_statistic"] = best
    return out


def _data(space):
    from slimkit.data import load_data

    res = max(space.resolutions)
    return load_data("fashion-mnist", input_size=(1, res, res), train_samples=TRAIN_SAMPLES,
                     val_samples=VAL_SAMPLES, seed=0)


def train_part() -> dict:
    import torch

    from slimkit.engine.config import TrainConfig
    from slimkit.search.evaluate import ChildEvaluator
    from slimkit.search.space import load_space
    from slimkit.search.train import check_space_data, load_supernet, train_supernet

    torch.set_num_threads(1)
    space = load_space("mbv2")
    data = _data(space)
    space = check_space_data(space, 1, data.num_classes)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, seed=0)
    start = time.perf_counter()
    train_supernet(space, data, cfg, WORK / "supernet", overwrite=True, progress=False)
    (WORK / "supernet" / "search_train.json").write_text(json.dumps(
        {"data": "fashion-mnist", "train_samples": TRAIN_SAMPLES, "val_samples": VAL_SAMPLES, "seed": 0}))
    train_s = time.perf_counter() - start
    net, _ = load_supernet(WORK / "supernet")
    ev = ChildEvaluator(net, data)
    rows = [_child_vs_scratch(space, ev, arch, data, cfg, name)
            for name, arch in (("largest", space.largest()), ("smallest", space.smallest()))]
    return {"environment": environment(1), "train_samples": TRAIN_SAMPLES, "val_samples": VAL_SAMPLES,
            "epochs": EPOCHS, "supernet_train_seconds": round(train_s, 1), "children": rows}


def _child_vs_scratch(space, ev, arch, data, cfg, name: str) -> dict:
    """Top-1 of `arch` taken from the supernet (BN recalibrated) and of the same net trained alone."""
    import torch

    from slimkit.engine.evaluate import evaluate
    from slimkit.engine.fit import fit
    from slimkit.search.child import ChildNet, child_spec
    from slimkit.search.evaluate import _Resized

    torch.manual_seed(0)
    scratch = _Resized(ChildNet(child_spec(space, arch)), arch.resolution)
    fit(scratch, data, cfg, progress=False)
    return {"child": name, "arch": arch.model_dump(), "supernet_top1": ev.accuracy(arch),
            "scratch_top1": float(evaluate(scratch, data.val)["top1"])}


def search_part(target_ms: float | None) -> dict:
    from slimkit.search.evolution import EvolutionConfig
    from slimkit.search.run import run_search
    from slimkit.search.space import load_space
    from slimkit.search.table import LatencyTable

    table = LatencyTable.load(WORK / "latency_table.json")
    space = load_space("mbv2")
    if target_ms is None:  # halfway between the smallest and the largest child
        target_ms = round((table.predict_ms(space.largest()) + table.predict_ms(space.smallest())) / 2, 3)
    data = _data(space)
    res = run_search(WORK / "supernet", table, data, target_ms, WORK / "search", confirm=3, threads=1,
                     evolution=EvolutionConfig(population=10, generations=3, seed=0), val_samples=VAL_SAMPLES)
    front = run_search(WORK / "supernet", table, data, target_ms, WORK / "pareto", pareto=True, threads=1,
                       evolution=EvolutionConfig(population=10, generations=3, seed=0), val_samples=VAL_SAMPLES)
    return {"environment": environment(1), "target_ms": target_ms, "evaluated": res["evaluated"],
            "winner": res["winners"][0], "confirmed": res["confirmed"], "pareto_front": front["confirmed"]}


def proxies_part(n: int = 30) -> dict:
    """Kendall tau of zero-cost proxies and MACs/params against the children's supernet top-1 (BN recalibrated)."""
    import random

    import torch

    from slimkit.search.child import ChildNet, child_spec
    from slimkit.search.evaluate import ChildEvaluator
    from slimkit.search.proxies import rank_correlation, score
    from slimkit.search.train import load_supernet, resize_to

    torch.set_num_threads(1)
    net, _ = load_supernet(WORK / "supernet")
    space, data = net.space, _data(net.space)
    ev = ChildEvaluator(net, data)
    rng = random.Random(5)
    archs = [space.sample(rng) for _ in range(n)]
    x = torch.stack([data.train[i][0] for i in range(64)])
    y = torch.tensor([int(data.train[i][1]) for i in range(64)])
    scores, accs = [], []
    for arch in archs:
        scores.append(score(lambda a=arch: ChildNet(child_spec(space, a)), resize_to(x, arch.resolution), y))
        accs.append(ev.accuracy(arch))
    return {"environment": environment(1), "n": n, "accuracy": "supernet child top-1 (BN recalibrated), not "
            "stand-alone training", "kendall_tau": rank_correlation(scores, accs), "accuracies": accs,
            "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["latency", "train", "search", "proxies"])
    parser.add_argument("--target-ms", type=float, default=None)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    payload = {"latency": latency_part, "train": train_part, "proxies": proxies_part}.get(
        args.part, lambda: search_part(args.target_ms))()
    _merge(args.part, payload)


if __name__ == "__main__":
    main()
