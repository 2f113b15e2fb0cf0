"""Edge techniques, measured: patch-based inference on tv:mobilenet_v2 at 224 and 96 (peak-memory cut and
MAC overhead), receptive-field redistribution, the confidence cascade and split computing on Fashion-MNIST.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py patch
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py cascade WORKDIR --no-time   (trains)
    flock -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py cascade WORKDIR   (times: run it alone)
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py split WORKDIR   (trains its parent if missing)
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py redistribute WORKDIR

`--help` lists the options (child size and epochs, split sweep, fine-tuning epochs); the defaults are the
configuration of the figures in docs/edge.md. Writes benchmarks/results/edge_bench.json (one key per
technique; the cascade one entry per pairing), edge_patch.png, edge_cascade.png, edge_split.png and
edge_split.html. Train with OMP_NUM_THREADS=1 on a loaded machine (2 threads ran 12x slower at load 5-10).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from _common import RESULTS, ROOT, environment

PATCH_CASES = [(224, (4, 4)), (96, (4, 4)), (96, (6, 6))]


def bench_patch() -> dict:
    import torchvision

    from slimkit.deploy.edge.patch import PatchConfig, patch_model
    from slimkit.deploy.edge.patch_report import measure_patch

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2().eval()
    rows = []
    for size, grid in PATCH_CASES:
        patched, traced, chosen = patch_model(net, (3, size, size), PatchConfig(grid=grid))
        r = measure_patch(net, patched, traced, chosen)
        r.pop("_plans")
        r.pop("tiles")
        rows.append({"model": "tv:mobilenet_v2", **r})
        print(json.dumps({k: rows[-1][k] for k in ("input_size", "cut", "grid", "arena_bytes", "macs")}))
    return {"rows": rows, "environment": environment(torch.get_num_threads())}


def patch_figure(rows: list[dict]) -> None:
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['input_size'][1]}px {r['grid'][0]}x{r['grid'][1]}" for r in rows]
    cut = [r["arena_bytes"]["before"]["int8"] / r["arena_bytes"]["after"]["int8"] for r in rows]
    est = [r["lifetime_estimate_bytes"]["before"]["fp32"] / r["lifetime_estimate_bytes"]["after"]["fp32"] for r in rows]
    over = [100 * r["macs"]["overhead"] for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], cut, 0.4, label="peak-memory cut, arena plan (x)")
    ax.bar([x + 0.2 for x in xs], est, 0.4, label="peak-memory cut, profiler estimate (x)")
    ax.axhline(4, color="k", ls="--", lw=0.8)
    for x, o in zip(xs, over):
        ax.annotate(f"+{o:.1f}% MACs", (x, max(cut[x], est[x])), ha="center", xytext=(0, 4), textcoords="offset points")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("before / after")
    ax.set_title("tv:mobilenet_v2 patch-based inference: memory cut and halo MAC overhead")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "edge_patch.png", dpi=110)


def parent_step(epochs: int, samples: int, model: str = "parent") -> tuple[str, list[str]]:
    """The Fashion-MNIST parent CNN of the cascade and the split, one folder per model and training setting."""
    return (f"{model}-e{epochs}-n{samples}", ["train", f"benchmarks/edge_models.py:{model}", "--data",
                                              "fashion-mnist", "--train-samples", str(samples), "--val-samples",
                                              "2000", "--epochs", str(epochs)])


def cascade_steps(opt) -> list[tuple[str, list[str]]]:
    """(output folder, slimkit arguments) of the cascade; each step is skipped when its folder exists."""
    parent = parent_step(opt.parent_epochs, opt.train_samples, opt.parent_model)
    child = f"child-{parent[0]}-macs{opt.child_macs:g}-e{opt.child_epochs:g}"
    steps = [parent, (child, ["prune", "{work}/" + parent[0], "--target", f"macs={opt.child_macs:g}", "--data",
                              "fashion-mnist", "--train-samples", str(opt.train_samples), "--val-samples", "2000",
                              "--epochs", f"{opt.child_epochs:g}", "--kd", "--no-latency", "--trust-code"])]
    cascade = ["deploy", "cascade", "{work}/" + child, "{work}/" + parent[0], "--data", "fashion-mnist",
               "--val-samples", "2000", "--max-drop", "0.5", "--threads", "1", "--timed-images", "500", "--trust-code"]
    if not opt.converter_epochs:
        return [*steps, (f"cascade-{child}", cascade)]
    conv = f"converter-{child}-w{opt.converter_width}-e{opt.converter_epochs}"  # CBNet's autoencoder before the child
    conv += f"-ce{opt.converter_ce:g}" if opt.converter_ce else ""
    steps.append((conv, ["deploy", "converter", "{work}/" + child, "--data", "fashion-mnist", "--train-samples",
                         str(opt.train_samples), "--val-samples", "2000", "--epochs", str(opt.converter_epochs),
                         "--width", str(opt.converter_width), "--ce-weight", f"{opt.converter_ce:g}",
                         "--trust-code"]))
    return [*steps, (f"cascade-{conv}", [*cascade, "--converter", "{work}/" + conv])]


def _run_steps(work: Path, steps) -> list[str]:
    """Run each slimkit command of `steps` whose output folder is not there yet (a rerun resumes); their text."""
    commands = []
    for folder, args in steps:
        command = [sys.executable, "-m", "slimkit.cli.main", *(a.format(work=work) for a in args),
                   "--out", str(work / folder)]
        commands.append(" ".join(command[3:]))
        if not (work / folder).exists():
            subprocess.run(command, cwd=ROOT, check=True)
    return commands


def bench_cascade(work: Path, opt) -> dict:
    """Parent CNN trained on Fashion-MNIST, pruned with KD to a fraction of its MACs, cascaded child -> parent.

    With --no-time only the training steps run (the cascade step times, so it runs alone on the machine)."""
    steps = cascade_steps(opt)
    commands = _run_steps(work, steps[:-1] if opt.no_time else steps)
    if opt.no_time:
        return {}
    folder = work / steps[-1][0]
    report = json.loads((folder / "report.json").read_text())
    report["choice"].pop("curve")
    pruned = json.loads((work / steps[1][0] / "report.json").read_text())
    parent = json.loads((work / steps[0][0] / "metrics.json").read_text())
    report["heldout"].pop("curve")
    return {"commands": commands, "config": report["config"], "choice": report["choice"], "heldout": report["heldout"],
            "selection_images": report["selection_images"], "measured": report["measured"],
            "per_model_ms": report["per_model_ms"], "policy": report["policy"],
            "child": {k: pruned[k] for k in ("before", "after", "finetune")},
            "parent": {k: parent[k] for k in ("accuracy", "epochs_completed", "num_train")},
            "holdout_seeds": _holdout(folder, report["per_model_ms"], report["config"]),
            "environment": environment(report["threads"])}


def _holdout(folder: Path, per_model_ms: dict, config: dict, seeds: int = 10) -> list[dict]:
    """The command's choose-on-one-part, score-on-the-rest rule over several split seeds (no timing): how far
    the held-out figures of one split (the command's seed) are from those of other splits; also with a
    stricter --max-drop, to see whether choosing with a margin keeps the held-out drop in budget."""
    import numpy as np

    from slimkit.data import load_data
    from slimkit.deploy.edge.cascade import choose_threshold, confidence, holdout_split, score_threshold
    from slimkit.deploy.edge.cascade_build import _all_logits
    from slimkit.deploy.onnx_export import ort_session

    x, y = (t.numpy() for t in load_data("fashion-mnist", input_size=(1, 28, 28), val_samples=2000).val.tensors())
    small, big = (_all_logits(ort_session(folder / f"{m}.onnx", 1), x.astype("float32")) for m in ("small", "big"))
    conf, small_ok, big_ok = confidence(small, config["kind"]), small.argmax(1) == y, big.argmax(1) == y
    t_small, t_big = per_model_ms["small"]["median"], per_model_ms["big"]["median"]
    rows = []
    for max_drop, seed in ((d, s) for d in dict.fromkeys((config["max_drop"], 0.25, 0.0)) for s in range(seeds)):
        pick, score = holdout_split(len(y), config["holdout"], seed)
        c = choose_threshold(conf[pick], small_ok[pick], big_ok[pick], t_small, t_big, max_drop)
        held = score_threshold(c.threshold, conf[score], small_ok[score], big_ok[score], t_small, t_big)
        rows.append({"max_drop": max_drop, "seed": seed, "threshold": None if np.isinf(c.threshold) else c.threshold,
                     "selection_top1": c.accuracy, "heldout": held, "predicted_speedup": t_big / held["mean_latency_ms"]})
    return rows


def _cascade_figure(work: Path, runs: dict) -> None:
    """Cascade top-1 against the share sent to the parent (curves from WORK/<run>/): the plain pairings on the
    left, runs with CBNet's converter on the right next to the plain cascade of the same child."""
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = iter(("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:red", "tab:olive", "tab:cyan"))
    plain = {name: run for name, run in runs.items() if "converter" not in name}
    for name, run in runs.items():
        color = next(colors)
        axs = [axes[1]] if "converter" in name else [axes[0]]
        if "converter" not in name and any(name.removeprefix("cascade-") in k for k in runs if "converter" in k):
            axs.append(axes[1])  # the reference for the converter runs of this child
        for ax in axs:
            _cascade_lines(ax, work / name, run, name.removeprefix("cascade-").replace("child-", ""), color)
    for ax, title in zip(axes, ("compressed child -> parent", "with CBNet's converter before the child")):
        ax.set_xlabel("% of images sent to the parent")
        ax.set_ylabel("cascade top-1 (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
    if plain:
        axes[0].set_ylim(80, 90)
    fig.suptitle("Confidence cascade on Fashion-MNIST: chosen on 1000 images (solid, o), scored on the other 1000 "
                 "(dashed, x); dotted: the parent's top-1 - 0.5 (held out)", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "edge_cascade.png", dpi=110)


def _cascade_lines(ax, folder: Path, run: dict, label: str, color: str) -> None:
    path = folder / "report.json"
    if not path.is_file():
        return
    report, m = json.loads(path.read_text()), run["measured"]
    c, h = report["choice"], report["heldout"]
    speed = m["big_alone_ms"]["mean"] / m["cascade_ms"]["mean"]
    label = (f"{label}: held out {100 * h['fraction_sent']:.1f}% sent, {-h['drop']:+.2f} pt, {speed:.2f}x measured")
    for rows, style in ((c["curve"], "-"), (h["curve"], "--")):
        rows = sorted(rows, key=lambda r: r["fraction_sent"])
        ax.plot([100 * r["fraction_sent"] for r in rows], [r["accuracy"] for r in rows], color=color, ls=style,
                lw=1.2 if style == "-" else 0.8, label=label if style == "-" else None)
    ax.axhline(h["big_accuracy"] - 0.5, color=color, ls=":", lw=0.8)
    ax.plot([100 * c["fraction_sent"]], [c["accuracy"]], "o", color=color)
    ax.plot([100 * h["fraction_sent"]], [h["accuracy"]], "x", color=color, ms=8)


def split_steps(opt) -> list[tuple[str, list[str]]]:
    """The split's parent (its own training setting), then one sweep over lambda (a run that resumes)."""
    parent = parent_step(opt.split_parent_epochs, opt.split_parent_samples)
    return [parent, (opt.split_dir, [
        "deploy", "split", "{work}/" + parent[0], "--at", "13", "--bottleneck", str(opt.split_bottleneck), "--hidden",
        str(opt.split_hidden), "--lambda", opt.split_lambdas, "--data", "fashion-mnist", "--train-samples",
        str(opt.split_train_samples), "--val-samples", "2000", "--epochs", str(opt.split_epochs), "--trust-code"])]


def bench_split(work: Path, opt) -> dict:
    """A parent CNN split after its second pooling (7x7): one sweep over lambda.

    The run resumes (--resume) if it was interrupted; its report.html holds the rate-accuracy plot."""
    parent, (name, args) = split_steps(opt)
    commands = _run_steps(work, [parent])
    folder = work / name
    command = [sys.executable, "-m", "slimkit.cli.main", *(a.format(work=work) for a in args), "--out", str(folder)]
    if not (folder / "report.json").is_file() or (folder / "INCOMPLETE").exists():
        subprocess.run(command + (["--resume"] if folder.exists() else []), cwd=ROOT, check=True)
    report = json.loads((folder / "report.json").read_text())
    shutil.copyfile(folder / "report.html", RESULTS / "edge_split.html")
    _split_figure(report)
    return {"commands": [*commands, " ".join(command[3:])], **report, "environment": environment(1)}


def _split_figure(report: dict) -> None:
    import base64

    from slimkit.deploy.edge.split_html import rate_accuracy_png

    (RESULTS / "edge_split.png").write_bytes(base64.b64decode(rate_accuracy_png(report).split(",", 1)[1]))


# Fashion-MNIST at its own 28x28 and 4000 images: a short fine-tune on a shared 2-core machine (the patch
# stage is then 14x14, so a 2x2 grid); the MAC overheads at 56x56 and on tv:mobilenet_v2 need no training.
RD_COMMON = ["--data", "fashion-mnist", "--input-size", "1x28x28", "--train-samples", "4000", "--val-samples", "2000"]


def rd_steps(opt) -> list[tuple[str, list[str]]]:
    """(output folder, slimkit arguments); each step is skipped when its folder exists. --rd-finetunes lists
    MODEL:EPOCHS:LR fine-tunes (unchanged or redistributed), each from the weights after the original 2 epochs."""
    models = {"unchanged": "{work}/rd_base", "redistributed": "{work}/rd_patch/redistributed"}
    steps = [
        ("rd_base", ["train", "benchmarks/edge_models.py:mcunet_like", *RD_COMMON, "--epochs", "2"]),
        ("rd_patch", ["deploy", "patch", "{work}/rd_base", "--patches", "2x2", "--until", "4", "--redistribute",
                      "--input-size", "1x28x28", "--trust-code"]),
    ]
    for item in opt.rd_finetunes.split(","):
        model, epochs, lr = item.split(":")
        steps.append((f"rd_{model}_ft-e{epochs}-lr{float(lr):g}", ["train", models[model], *RD_COMMON, "--epochs",
                                                                   epochs, "--lr", f"{float(lr):g}", "--trust-code"]))
    return steps


def _redistribution_macs() -> list[dict]:
    """tv:mobilenet_v2 and mcunet_like at 56x56 (random init: MACs and memory do not depend on weights)."""
    import torchvision

    from slimkit.deploy.edge.patch import PatchConfig, patch_model
    from slimkit.deploy.edge.patch_report import measure_patch
    from slimkit.deploy.edge.redistribute import redistribute_patched, summary

    from edge_models import mcunet_like

    torch.manual_seed(0)
    cases = [(torchvision.models.mobilenet_v2().eval(), "tv:mobilenet_v2", (3, s, s), g, None) for s, g in PATCH_CASES]
    cases.append((mcunet_like().eval(), "edge_models.py:mcunet_like", (1, 56, 56), (4, 4), "4"))
    rows = []
    for net, name, size, grid, until in cases:
        patched, traced, chosen = patch_model(net, size, PatchConfig(grid=grid, until=until))
        new, p_new, t_new, c_new, changes = redistribute_patched(net, traced, chosen, size)
        s = summary(measure_patch(net, patched, traced, chosen), measure_patch(new, p_new, t_new, c_new), changes)
        rows.append({"model": name, "input_size": list(size), **s})
        print(json.dumps({"size": size, "grid": grid, "overhead": [s["unchanged"]["macs"]["overhead"],
                                                                   s["redistributed"]["macs"]["overhead"]]}))
    return rows


def bench_redistribute(work: Path, opt) -> dict:
    """MAC overhead before/after (mobilenet_v2, mcunet_like); accuracy after fine-tuning on Fashion-MNIST."""
    steps = rd_steps(opt)
    commands = _run_steps(work, steps)
    metrics = {f: json.loads((work / f / "metrics.json").read_text()) for f, _ in steps if f != "rd_patch"}
    patch = json.loads((work / "rd_patch" / "patch.json").read_text())
    return {"commands": commands, "fashion_mnist": {
        "patch": patch["redistribution"], "top1": {f: m["accuracy"] for f, m in metrics.items()},
        "epochs": {f: m["epochs_completed"] for f, m in metrics.items()}},
        "macs_rows": _redistribution_macs(), "environment": environment(torch.get_num_threads())}


def _options(argv: list[str]):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("which", nargs="?", default="patch", choices=("patch", "cascade", "split", "redistribute"))
    ap.add_argument("work", nargs="?", type=Path, default=Path("/tmp/edge_runs"), help="folder of the trained models")
    ap.add_argument("--train-samples", type=int, default=12000, help="cascade: parent and child training images")
    ap.add_argument("--parent-epochs", type=int, default=2)
    ap.add_argument("--parent-model", default="parent", choices=("parent", "parent_wide"), help="edge_models.py")
    ap.add_argument("--child-macs", type=float, default=0.2, help="cascade: the child's MACs, fraction of the parent")
    ap.add_argument("--child-epochs", type=float, default=3, help="cascade: KD fine-tuning epochs of the child")
    ap.add_argument("--no-time", action="store_true", help="cascade: train only, skip the timed cascade step")
    ap.add_argument("--converter-epochs", type=int, default=0, help="cascade: train CBNet's converting autoencoder "
                    "in front of the child for N epochs (0: none)")
    ap.add_argument("--converter-width", type=int, default=16, help="cascade: the converter's channels")
    ap.add_argument("--converter-ce", type=float, default=0.0, help="cascade: the converter's --ce-weight")
    ap.add_argument("--split-parent-epochs", type=int, default=2)
    ap.add_argument("--split-parent-samples", type=int, default=12000)
    ap.add_argument("--split-lambdas", default="0.03,0.1,0.3")
    ap.add_argument("--split-epochs", type=int, default=3)
    ap.add_argument("--split-train-samples", type=int, default=12000)
    ap.add_argument("--split-bottleneck", type=int, default=4)
    ap.add_argument("--split-hidden", type=int, default=16)
    ap.add_argument("--split-dir", default="split-e3-3l", help="split: run folder under WORK")
    ap.add_argument("--rd-finetunes", default="unchanged:1:3e-4,redistributed:1:3e-4,redistributed:3:1e-3,unchanged:3:1e-3",
                    help="redistribute: MODEL:EPOCHS:LR fine-tunes after the original's 2 epochs")
    return ap.parse_args(argv)


def main(argv: list[str]) -> None:
    opt = _options(argv)
    benches = {"patch": bench_patch, "cascade": lambda: bench_cascade(opt.work, opt),
               "split": lambda: bench_split(opt.work, opt), "redistribute": lambda: bench_redistribute(opt.work, opt)}
    result = benches[opt.which]()
    if not result:  # cascade --no-time: trained, nothing measured
        return
    if opt.which == "patch":
        patch_figure(result["rows"])
    path = RESULTS / "edge_bench.json"  # read just before writing: several techniques may run at once
    results = json.loads(path.read_text()) if path.exists() else {}
    if opt.which == "cascade":  # one entry per pairing (parent model, child size and epochs)
        runs = results.get("cascade", {})
        result = {**({} if "commands" in runs else runs), cascade_steps(opt)[-1][0]: result}
        _cascade_figure(opt.work, result)
    results[opt.which] = result
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
