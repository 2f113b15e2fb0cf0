"""search_bench figure 1: searched children against the MobileNetV2 width-multiplier family, on the plane of
top-1 and measured ONNX Runtime latency (imported by search_bench.py; steps resume from WORK/frontier).

  base     trains the baselines for the supernet's epochs on the same subset and resolution: torchvision's
           mobilenet_v2(width_mult=w) for w in 0.35/0.5/0.75/1.0 (first conv to 1 channel, 10 classes, fed the
           32 px images), and the same widths laid out like the mbv2 space (k3, e6, every stage at max depth).
  search   the whole accuracy-latency front of the trained supernet (needs `train` and `latency`), then the
           front's children retrained alone for the same epochs (the usual NAS protocol: MnasNet, OFA).
  measure  every baseline and front child exported and timed together in ONNX Runtime (interleaved), then
           the dominance figures and the plot. Timing: run it alone (quiet.sh or flock -x).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

WIDTHS = (0.35, 0.5, 0.75, 1.0)
RETRAIN = 4  # front children retrained alone, spread over the front


def _cached(path: Path, make) -> Any:
    """The JSON at `path`, or make() written there first (each long step is done once: resume)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


def torchvision_mbv2(width: float, in_chans: int = 1, classes: int = 10):
    """torchvision's MobileNetV2 at `width`, its first conv taking `in_chans` channels."""
    import torch.nn as nn
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(width_mult=width, num_classes=classes)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_chans, first.out_channels, 3, first.stride, 1, bias=False)
    return net


def space_mbv2(space, width: float, resolution: int):
    """MobileNetV2's choices (3x3, expand 6, every stage at its largest depth) in `space`'s layout at `width`."""
    from slimkit.search.child import ChildNet, child_spec
    from slimkit.search.space import Arch

    depths = [max(s.depths) for s in space.stages]
    arch = Arch(resolution=resolution, width=width, depths=depths, kernels=[[3] * d for d in depths],
                expands=[[6] * d for d in depths])
    return ChildNet(child_spec(space, arch))


def baselines(space, resolution: int) -> dict[str, Any]:
    """name -> a new random-init baseline network (seeded by the caller)."""
    nets = {f"torchvision mbv2 x{w}": (lambda w=w: torchvision_mbv2(w)) for w in WIDTHS}
    nets.update({f"space mbv2 x{w}": (lambda w=w: space_mbv2(space, w, resolution)) for w in WIDTHS})
    return nets


def _train_eval(net, data, cfg) -> dict[str, Any]:
    import torch

    from slimkit.engine.evaluate import evaluate
    from slimkit.engine.fit import fit
    from slimkit.profile.counter import count_macs

    start = time.perf_counter()
    fit(net, data, cfg, progress=False)
    net.eval()
    macs = count_macs(net, torch.zeros(1, *data.input_size))
    return {"top1": float(evaluate(net, data.val)["top1"]), "macs": int(macs.total),
            "params": sum(p.numel() for p in net.parameters()), "train_seconds": round(time.perf_counter() - start, 1)}


def base_step(work: Path, space, data, cfg, train: bool = True) -> dict[str, Any]:
    """Each baseline's top-1, MACs and params (trained now unless cached; without `train` only the cached)."""
    import torch

    out = {}
    for name, make in baselines(space, max(space.resolutions)).items():
        if not train and not (work / "frontier" / f"base_{name.replace(' ', '_')}.json").is_file():
            continue
        def run(make=make):
            torch.manual_seed(cfg.seed)
            return _train_eval(make(), data, cfg)

        out[name] = _cached(work / "frontier" / f"base_{name.replace(' ', '_')}.json", run)
        print(name, out[name], flush=True)
    return out


def search_step(work: Path, table, data, cfg, evolution, retrain: int = RETRAIN) -> dict[str, Any]:
    from slimkit.search.evaluate import train_alone
    from slimkit.search.run import run_search
    from slimkit.search.space import Arch

    space = table.space
    target = round((table.predict_ms(space.largest()) + table.predict_ms(space.smallest())) / 2, 3)
    res = _cached(work / "frontier" / "front.json", lambda: run_search(
        work / "supernet", table, data, target, work / "frontier" / "front", pareto=True, threads=1,
        evolution=evolution, val_samples=len(data.val)))
    front = res["confirmed"]  # fastest first
    pick = sorted({round(i * (len(front) - 1) / max(1, retrain - 1)) for i in range(min(retrain, len(front)))})
    rows = []
    for i in range(len(front)):
        row = {"arch": front[i]["arch"], "supernet_top1": front[i]["accuracy"], "predicted_ms": front[i]["predicted_ms"]}
        if i in pick:
            arch = Arch.model_validate(row["arch"])
            row["retrained_top1"] = _cached(work / "frontier" / f"retrain_{i}.json",
                                            lambda arch=arch: train_alone(space, arch, data, cfg))
            print("retrained", i, row["retrained_top1"], flush=True)
        rows.append(row)
    return {"target_ms": target, "evaluated": res["evaluated"], "evolution": res["evolution"], "front": rows}


def seed_step(work: Path, space, data, cfg, with_baselines: bool = True) -> dict[str, Any]:
    """The close comparisons again with another seed (cfg.seed): the space-layout baselines (unless not
    `with_baselines`) and the retrained front children (same subset and validation images; only
    initialisation and batch order change)."""
    import torch

    from slimkit.search.evaluate import train_alone
    from slimkit.search.space import Arch

    out = {}
    for name, make in baselines(space, max(space.resolutions)).items():
        if with_baselines and name.startswith("space"):
            def run(make=make):
                torch.manual_seed(cfg.seed)
                return _train_eval(make(), data, cfg)["top1"]

            out[name] = _cached(work / "frontier" / f"seed{cfg.seed}_{name.replace(' ', '_')}.json", run)
            print(name, out[name], flush=True)
    for i, row in enumerate(front_rows(work)[1]):
        if "retrained_top1" in row:
            arch = Arch.model_validate(row["arch"])
            out[f"front {i}"] = _cached(work / "frontier" / f"seed{cfg.seed}_retrain_{i}.json",
                                        lambda arch=arch: train_alone(space, arch, data, cfg))
            print(i, out[f"front {i}"], flush=True)
    return {"seed": cfg.seed, "top1": out}


def front_rows(work: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The searched front (fastest first) with the retrained top-1 of the children retrained so far."""
    res = json.loads((work / "frontier" / "front.json").read_text())
    rows = []
    for i, c in enumerate(res["confirmed"]):
        row = {"arch": c["arch"], "supernet_top1": c["accuracy"], "predicted_ms": c["predicted_ms"]}
        done = work / "frontier" / f"retrain_{i}.json"
        if done.is_file():
            row["retrained_top1"] = json.loads(done.read_text())
        rows.append(row)
    info = {"target_ms": res["target_ms"], "evaluated": res["evaluated"], "evolution": res["evolution"],
            "val_samples": res["val_samples"]}
    return info, rows


def front_modules(work: Path, space, label: str = "front") -> dict[str, Any]:
    """`label i` -> (random-init ChildNet, input size) for each child of the searched front, in the search's order."""
    from slimkit.search.child import ChildNet, child_spec
    from slimkit.search.space import Arch

    mods = {}
    for i, row in enumerate(json.loads((work / "frontier" / "front.json").read_text())["confirmed"]):
        arch = Arch.model_validate(row["arch"])
        mods[f"{label} {i}"] = (ChildNet(child_spec(space, arch)), (space.in_chans, arch.resolution, arch.resolution))
    return mods


def all_modules(work: Path, space) -> dict[str, Any]:
    """Every baseline and front child of `frontier` (latency does not depend on the weights: random init)."""
    import torch

    res = max(space.resolutions)
    torch.manual_seed(0)
    mods = {name: (make(), (space.in_chans, res, res)) for name, make in baselines(space, res).items()}
    return mods | front_modules(work, space)


def measure_step(work: Path, space, repetitions: int = 200, rounds: int = 20, export_only: bool = False,
                 mods: dict[str, Any] | None = None, onnx: Path | None = None) -> dict[str, Any]:
    """Latency of `mods` (default: every baseline and front child) timed in one interleaved run (1 thread,
    batch 1); with `export_only` just the (slow, verified) exports into `onnx`, kept for the timing run."""
    from slimkit.search.latency import export_modules, measure_modules

    mods = mods or all_modules(work, space)
    onnx = onnx or work / "frontier" / "onnx"  # files are named by position: one folder per module set
    onnx.mkdir(parents=True, exist_ok=True)
    if export_only:
        return {"exported": {k: str(p) for k, p in export_modules(mods, onnx).items()}}
    got = measure_modules(mods, 1, repetitions=repetitions, rounds=rounds, export_dir=onnx)
    return {k: {"min_ms": v.min_ms, "median_ms": v.median_ms, "iqr_ms": v.iqr_ms} for k, v in got.items()}


# figure 6's models timed again next to another space's front: every baseline and the retrained mbv2 children
ANCHORS = tuple(f"{k} mbv2 x{w}" for k in ("torchvision", "space") for w in WIDTHS) + tuple(
    f"front {i}" for i in (0, 3, 7, 10))


def anchored_step(work: Path, space, base_work: Path, base_space, fig: dict[str, Any] | None,
                  png: Path) -> dict[str, Any]:
    """`space`'s front (in `work`) timed in one interleaved run with ANCHORS (figure 6's models, `base_work`),
    dominance against the baselines of that run, and figure 6's plot (`fig`) redrawn with the new series;
    with `fig` None only the exports."""
    label = f"{space.name} front"
    mods = {k: v for k, v in all_modules(base_work, base_space).items() if k in ANCHORS}
    mods |= front_modules(work, space, label)
    lat = measure_step(work, None, export_only=fig is None, mods=mods, onnx=work / "frontier" / "onnx_anchored")
    if fig is None:
        return lat
    info, front = front_rows(work)
    xs = [lat[f"{label} {i}"]["min_ms"] for i in range(len(front))]
    out = {"search": info, "latency": lat, "front": front, "dominance": {},
           "anchor_ratio_min_ms": {k: lat[k]["min_ms"] / fig["latency"][k]["min_ms"] for k in ANCHORS}}
    for kind in ("retrained_top1", "supernet_top1"):
        pts = [(x, r[kind]) for x, r in zip(xs, front) if kind in r]
        out["dominance"][kind] = {n: dominance(pts, lat[n]["min_ms"], b["top1"]) for n, b in fig["baselines"].items()}
    kept = [(x, r["retrained_top1"] * 100) for x, r in zip(xs, front) if "retrained_top1" in r]
    extra = [(f"{label}, supernet weights", xs, [r["supernet_top1"] * 100 for r in front], "o:", "tab:purple"),
             (f"{label}, retrained alone", *map(list, zip(*kept)), "^-", "tab:orange")]
    plot(png, fig["baselines"], fig["front"], fig["latency"], "min_ms", extra)
    return out


def dominance(points: list[tuple[float, float]], base_ms: float, base_top1: float) -> dict[str, Any]:
    """Against one baseline: the best searched top-1 at no more latency (gain, points) and the fastest searched
    child at no less top-1 (speedup); None where no searched child qualifies."""
    at_lat = [a for ms, a in points if ms <= base_ms]
    at_acc = [ms for ms, a in points if a >= base_top1]
    gain = (max(at_lat) - base_top1) * 100 if at_lat else None
    speedup = base_ms / min(at_acc) if at_acc else None
    return {"gain_points": gain, "speedup": speedup,
            "meets_aim": bool((gain is not None and gain >= 0.5) or (speedup is not None and speedup >= 1.3))}


def plot(path: Path, base: dict[str, Any], front: list[dict[str, Any]], lat: dict[str, Any], stat: str,
         extra: list[tuple[str, list[float], list[float], str, str]] = ()) -> Path:
    """The plane of top-1 and latency; `extra`: more series as (label, latencies, top-1 %, marker, colour)."""
    from slimkit.report.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for prefix, color in (("torchvision", "tab:gray"), ("space", "tab:green")):
        names = [n for n in base if n.startswith(prefix) and n in lat]
        ax.plot([lat[n][stat] for n in names], [base[n]["top1"] * 100 for n in names], "s--", color=color,
                label=f"{prefix} MobileNetV2 x0.35-1.0, trained alone")
    xs = [lat[f"front {i}"][stat] for i in range(len(front))]
    ax.plot(xs, [r["supernet_top1"] * 100 for r in front], "o-", color="tab:blue", label="mbv2 searched front, supernet weights")
    kept = [(x, r["retrained_top1"] * 100) for x, r in zip(xs, front) if "retrained_top1" in r]
    if kept:
        ax.plot(*zip(*kept), "D-", color="tab:red", label="mbv2 searched front, retrained alone")
    for label, xs_, ys_, fmt, color in extra:
        ax.plot(*zip(*sorted(zip(xs_, ys_))), fmt, color=color, label=label)
    ax.set_xlabel(f"ONNX Runtime latency, {stat} per call (ms, 1 thread, batch 1)")
    ax.set_ylabel("Fashion-MNIST top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
