"""slimkit search figures on the built-in `mbv2` space, sized for a shared 2-core CPU (about 1 h in all).

Parts (each merges its section into benchmarks/results/search_bench.json):

  latency  the ONNX Runtime latency table of mbv2 (1 thread, batch 1, every part timed interleaved),
           its correction fitted on 12 children, then predicted vs measured on 50 other sampled children.
           `latency-export` first writes the verified ONNX files (slow, any load); `latency` then only times,
           alone (other jobs paused, or under flock -x). `latency-export-emov2` / `latency-emov2`: the same
           for the EMOv2-like iRMB space.
  frontier figure 1 of the issue (search_frontier.py): `frontier-base` trains the MobileNetV2 width-multiplier
           baselines, `frontier-search` searches the supernet's front and retrains part of it alone (needs
           `train` and `latency`), `frontier-export` exports everything, `frontier` times it all alone and
           writes the figures and docs/search_frontier.png. `frontier-seed1`: the close ones again, seed 1.
           `--space emov2` with train / frontier-search / frontier-seed1: the same on emov2 (in WORK/emov2);
           `frontier-export-emov2`, then `frontier-emov2` (alone): its front timed with figure 6's models as
           anchors in one run, added to the plot.
  train    the supernet on a Fashion-MNIST subset at 24/32 px (sandwich rule, in-place distillation,
           delayed shrinking), then children's top-1 without retraining (BN recalibrated) against the same
           architectures trained from scratch for the same epochs (BigNAS's claim).
  proxies  Kendall tau of synflow, grad-norm, NASWOT, Zen, DeepMAD, MACs and params against 30 children's
           supernet top-1 (needs `train` first); `proxies-alone`: against the same 30 trained from scratch.
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
ROOT_DOCS = Path(__file__).resolve().parents[1] / "docs"
TRAIN_SAMPLES, VAL_SAMPLES, EPOCHS = 3000, 1000, 4
# proxies-alone: 30 children each trained from scratch on a smaller subset (about 25 min on 1 thread at load 15).
# 1 epoch at batch 64 left them near chance (8-16% top-1: no ranking to measure), hence 2 epochs at batch 32.
ALONE_EPOCHS, ALONE_TRAIN_SAMPLES, ALONE_BATCH = 2, 1500, 32


def _merge(part: str, payload: dict) -> None:
    path = RESULTS / "search_bench.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[part] = payload
    write_results("search_bench", data)


LATENCY = dict(calibrate=12, validate=50, seed=0)
ONNX_DIR = WORK / "latency_onnx"


def _onnx_dir(space: str):
    return ONNX_DIR if space == "mbv2" else WORK / f"latency_onnx_{space}"


def _table_path(space: str) -> Path:
    return WORK / ("latency_table.json" if space == "mbv2" else f"latency_table_{space}.json")


def _work(space: str) -> Path:
    """Where a space's supernet and front live: mbv2's at WORK (as before), another space's in WORK/<space>."""
    return WORK if space == "mbv2" else WORK / space


def latency_export_part(space_name: str = "mbv2") -> dict:
    """Every module the latency part times, exported (verified) into ONNX_DIR: slow, but needs no quiet machine."""
    from slimkit.search.latency import export_modules
    from slimkit.search.space import load_space
    from slimkit.search.table import table_modules

    start = time.perf_counter()
    modules, _, _ = table_modules(load_space(space_name), **LATENCY)
    _onnx_dir(space_name).mkdir(parents=True, exist_ok=True)
    export_modules(modules, _onnx_dir(space_name))
    return {"modules": len(modules), "seconds": round(time.perf_counter() - start, 1)}


def latency_part(space_name: str = "mbv2") -> dict:
    from slimkit.search.space import load_space
    from slimkit.search.table import build_table, refit

    space = load_space(space_name)
    start = time.perf_counter()
    table = build_table(space, 1, repetitions=200, rounds=20, export_dir=_onnx_dir(space_name), **LATENCY)
    out = {"environment": environment(1), "parts": len(table.entries), "seconds": round(time.perf_counter() - start, 1)}
    for stat in ("min", "median"):  # the same measurements, each statistic fitted and validated on its own
        refit(table, stat)
        out[stat] = {"overhead_ms": table.overhead_ms, "scale": table.scale, "offset_ms": table.offset_ms,
                     "fit_errors": table.calibration["fit_errors"], "validation": table.calibration["validation"]}
    # min is saved: it transfers to other runs (figure 6: front children timed later, in a 19-model run, within
    # -7%..+7% of the min table, +35..+50% off the median one: a 400-model interleaved build inflates medians)
    best = "min"
    refit(table, best).save(_table_path(space_name))
    out["table_statistic"] = best
    return out


def _data(space, train_samples: int = TRAIN_SAMPLES):
    from slimkit.data import load_data

    res = max(space.resolutions)
    return load_data("fashion-mnist", input_size=(1, res, res), train_samples=train_samples,
                     val_samples=VAL_SAMPLES, seed=0)


def train_part(space_name: str = "mbv2") -> dict:
    import torch

    from slimkit.engine.config import TrainConfig
    from slimkit.search.evaluate import ChildEvaluator
    from slimkit.search.space import load_space
    from slimkit.search.train import check_space_data, load_supernet, train_supernet

    torch.set_num_threads(1)
    space = load_space(space_name)
    data = _data(space)
    space = check_space_data(space, 1, data.num_classes)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, seed=0)
    run = _work(space_name) / "supernet"
    start = time.perf_counter()
    train_supernet(space, data, cfg, run, overwrite=True, progress=False)
    (run / "search_train.json").write_text(json.dumps(
        {"data": "fashion-mnist", "train_samples": TRAIN_SAMPLES, "val_samples": VAL_SAMPLES, "seed": 0}))
    train_s = time.perf_counter() - start
    net, _ = load_supernet(run)
    ev = ChildEvaluator(net, data)
    rows = [_child_vs_scratch(space, ev, arch, data, cfg, name)
            for name, arch in (("largest", space.largest()), ("smallest", space.smallest()))]
    return {"environment": environment(1), "space": space_name, "train_samples": TRAIN_SAMPLES,
            "val_samples": VAL_SAMPLES, "epochs": EPOCHS, "supernet_train_seconds": round(train_s, 1), "children": rows}


def _child_vs_scratch(space, ev, arch, data, cfg, name: str) -> dict:
    """Top-1 of `arch` taken from the supernet (BN recalibrated) and of the same net trained alone."""
    from slimkit.search.evaluate import train_alone

    return {"child": name, "arch": arch.model_dump(), "supernet_top1": ev.accuracy(arch),
            "scratch_top1": train_alone(space, arch, data, cfg)}


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


def proxies_part(n: int = 30, alone: bool = False) -> dict:
    """Kendall tau of the zero-cost proxies, MACs and params against n children's top-1: the supernet's children
    (BN recalibrated), or with `alone` each child trained from scratch for ALONE_EPOCHS on the same subset."""
    import torch

    from slimkit.engine.config import TrainConfig
    from slimkit.search.evaluate import ChildEvaluator, train_alone
    from slimkit.search.rank import proxy_batch, proxy_study, sample_distinct
    from slimkit.search.space import load_space
    from slimkit.search.train import check_space_data, load_supernet

    torch.set_num_threads(1)
    if alone:
        space = load_space("mbv2")
        data = _data(space, ALONE_TRAIN_SAMPLES)
        space = check_space_data(space, 1, data.num_classes)
        cfg = TrainConfig(epochs=ALONE_EPOCHS, batch_size=ALONE_BATCH, lr=3e-3, seed=0)
        accuracy = lambda a: train_alone(space, a, data, cfg)  # noqa: E731
        what = f"top-1 trained alone, {ALONE_EPOCHS} epoch(s) at batch {ALONE_BATCH} on {ALONE_TRAIN_SAMPLES} images"
    else:
        net, _ = load_supernet(WORK / "supernet")
        space, data = net.space, _data(net.space)
        accuracy, what = ChildEvaluator(net, data).accuracy, "supernet child top-1 (BN recalibrated)"
    x, y = proxy_batch(data.train, 64)
    start = time.perf_counter()
    res = proxy_study(space, sample_distinct(space, n, 5), accuracy, x, y)
    return {"environment": environment(1), "n": n, "accuracy": what, "seconds": round(time.perf_counter() - start, 1),
            "kendall_tau": res["kendall_tau"], "rows": res["rows"]}


def frontier_part(step: str, space_name: str = "mbv2") -> dict:
    """Figure 1 (see search_frontier.py): `frontier-base`, `frontier-search`, then `frontier` (timing + figures)."""
    import torch

    import search_frontier as fr
    from slimkit.engine.config import TrainConfig
    from slimkit.search.evolution import EvolutionConfig
    from slimkit.search.space import load_space
    from slimkit.search.table import LatencyTable

    torch.set_num_threads(1)
    space = load_space(space_name)
    data = _data(space)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, seed=0)
    if step == "base":
        return {"baselines": fr.base_step(WORK, space, data, cfg)}
    if step == "seed1":  # emov2: its retrained front children only (the baselines' seed 1 is mbv2's run)
        out = fr.seed_step(_work(space_name), space, data, TrainConfig(epochs=EPOCHS, batch_size=64, lr=3e-3, seed=1),
                           with_baselines=space_name == "mbv2")
        return {**out, "two_seed_dominance": _two_seeds(fr, out["top1"])} if space_name == "mbv2" else out
    if step == "export":
        return fr.measure_step(WORK, space, export_only=True)
    if step == "search":
        work = _work(space_name)
        found = fr.search_step(work, LatencyTable.load(_table_path(space_name)), data, cfg,
                               EvolutionConfig(population=16, generations=5, seed=0),
                               retrain=fr.RETRAIN if space_name == "mbv2" else 3)
        (work / "frontier" / "search.json").write_text(json.dumps(found))
        return found
    return frontier_figures(fr, space, data, cfg)


def frontier_emov2_part(export_only: bool = False) -> dict:
    """emov2's front on figure 6's plane (search_frontier.anchored_step), timed alone with figure 6's models."""
    import torch

    import search_frontier as fr
    from slimkit.search.space import load_space

    torch.set_num_threads(1)
    fig = None if export_only else json.loads((RESULTS / "search_bench.json").read_text())["frontier"]
    out = fr.anchored_step(_work("emov2"), load_space("emov2"), WORK, load_space("mbv2"), fig,
                           ROOT_DOCS / "search_frontier.png")
    return out if export_only else {"environment": environment(1), **out}


def _two_seeds(fr, seed1: dict) -> dict:
    """Dominance on the mean top-1 of seeds 0 and 1 (min latency of the `frontier` timing run)."""
    fig = json.loads((RESULTS / "search_bench.json").read_text())["frontier"]
    lat, mean = fig["latency"], {}
    for i, row in enumerate(fig["front"]):
        if f"front {i}" in seed1:
            mean[f"front {i}"] = (row["retrained_top1"] + seed1[f"front {i}"]) / 2
    pts = [(lat[k]["min_ms"], v) for k, v in mean.items()]
    return {n: {"mean_top1": (b["top1"] + seed1[n]) / 2, **fr.dominance(pts, lat[n]["min_ms"], (b["top1"] + seed1[n]) / 2)}
            for n, b in fig["baselines"].items() if n in seed1} | {"front_mean_top1": mean}


def frontier_figures(fr, space, data, cfg) -> dict:
    base = fr.base_step(WORK, space, data, cfg, train=False)  # the baselines trained by `frontier-base`
    info, front = fr.front_rows(WORK)
    lat = fr.measure_step(WORK, space)
    out = {"environment": environment(1), "train_samples": TRAIN_SAMPLES, "val_samples": VAL_SAMPLES,
           "epochs": EPOCHS, "search": info, "latency": lat, "baselines": base, "front": front, "dominance": {}}
    for stat in ("min_ms", "median_ms"):
        for kind in ("retrained_top1", "supernet_top1"):
            pts = [(lat[f"front {i}"][stat], r[kind]) for i, r in enumerate(front) if kind in r]
            out["dominance"][f"{kind}@{stat}"] = {n: fr.dominance(pts, lat[n][stat], b["top1"]) for n, b in base.items()}
    fr.plot(ROOT_DOCS / "search_frontier.png", base, front, lat, "min_ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["latency", "train", "search", "proxies", "proxies-alone", "frontier-base", "latency-export",
                                         "latency-emov2", "latency-export-emov2", "frontier-export",
                                         "frontier-seed1", "frontier-export-emov2", "frontier-emov2",
                                         "frontier-search", "frontier"])
    parser.add_argument("--target-ms", type=float, default=None)
    parser.add_argument("--space", default="mbv2", choices=["mbv2", "emov2"],
                        help="train / frontier-search / frontier-seed1: which space (emov2's results go under `<part>-emov2`)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    payload = {"latency": latency_part, "train": lambda: train_part(args.space), "proxies": proxies_part,
               "proxies-alone": lambda: proxies_part(alone=True), "frontier": lambda: frontier_part("figures"),
               "frontier-base": lambda: frontier_part("base"), "frontier-search": lambda: frontier_part("search", args.space),
               "latency-export": latency_export_part, "latency-emov2": lambda: latency_part("emov2"),
               "latency-export-emov2": lambda: latency_export_part("emov2"),
               "frontier-export": lambda: frontier_part("export"),
               "frontier-seed1": lambda: frontier_part("seed1", args.space), "frontier-emov2": frontier_emov2_part,
               "frontier-export-emov2": lambda: frontier_emov2_part(export_only=True)}.get(
        args.part, lambda: search_part(args.target_ms))()
    _merge(args.part if args.space == "mbv2" or args.part not in ("train", "frontier-search", "frontier-seed1")
           else f"{args.part}-{args.space}", payload)


if __name__ == "__main__":
    main()
