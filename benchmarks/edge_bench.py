"""Edge techniques, measured: patch-based inference on tv:mobilenet_v2 at 224 and 96 (peak-memory cut and
MAC overhead), and the confidence cascade on Fashion-MNIST.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py patch
    flock -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py cascade [WORKDIR]
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py split [WORKDIR]   (after cascade)
    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/edge_bench.py redistribute [WORKDIR]

Writes benchmarks/results/edge_bench.json (one key per technique), edge_patch.png, edge_split.png and edge_split.html.
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


CASCADE_STEPS = [  # (output folder, slimkit arguments); each step is skipped when its folder exists
    ("parent", ["train", "benchmarks/edge_models.py:parent", "--data", "fashion-mnist", "--epochs", "2",
                "--train-samples", "12000", "--val-samples", "2000"]),
    ("child", ["prune", "{work}/parent", "--target", "macs=0.1", "--data", "fashion-mnist", "--epochs", "1", "--kd",
               "--train-samples", "12000", "--val-samples", "2000", "--no-latency", "--trust-code"]),
    ("cascade", ["deploy", "cascade", "{work}/child", "{work}/parent", "--data", "fashion-mnist", "--val-samples",
                 "2000", "--max-drop", "0.5", "--threads", "1", "--timed-images", "500", "--trust-code"]),
]


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


def bench_cascade(work: Path) -> dict:
    """Parent CNN trained on Fashion-MNIST, pruned to 10% of its MACs with KD, cascaded child -> parent."""
    commands = _run_steps(work, CASCADE_STEPS)
    report = json.loads((work / "cascade" / "report.json").read_text())
    report["choice"].pop("curve")
    return {"commands": commands, "choice": report["choice"], "measured": report["measured"],
            "per_model_ms": report["per_model_ms"], "policy": report["policy"],
            "environment": environment(report["threads"])}


SPLIT_LAMBDAS = "0.1,1,4"
SPLIT_ARGS = ["deploy", "split", "{work}/parent", "--at", "13", "--bottleneck", "4", "--hidden", "16", "--lambda",
              SPLIT_LAMBDAS, "--data", "fashion-mnist", "--train-samples", "6000", "--val-samples", "2000",
              "--epochs", "1", "--trust-code"]


def bench_split(work: Path) -> dict:
    """The cascade benchmark's parent CNN split after its second pooling (7x7): one sweep over lambda.

    The run resumes (--resume) if it was interrupted; its report.html holds the rate-accuracy plot."""
    folder = work / "split"
    command = [sys.executable, "-m", "slimkit.cli.main", *(a.format(work=work) for a in SPLIT_ARGS),
               "--out", str(folder)]
    if not (folder / "report.json").is_file() or (folder / "INCOMPLETE").exists():
        subprocess.run(command + (["--resume"] if folder.exists() else []), cwd=ROOT, check=True)
    report = json.loads((folder / "report.json").read_text())
    shutil.copyfile(folder / "report.html", RESULTS / "edge_split.html")
    _split_figure(report)
    return {"command": " ".join(command[3:]), **report, "environment": environment(1)}


def _split_figure(report: dict) -> None:
    import base64

    from slimkit.deploy.edge.split_html import rate_accuracy_png

    (RESULTS / "edge_split.png").write_bytes(base64.b64decode(rate_accuracy_png(report).split(",", 1)[1]))


# Fashion-MNIST at its own 28x28 and 4000 images: a short fine-tune on a shared 2-core machine (the patch
# stage is then 14x14, so a 2x2 grid); the MAC overheads at 56x56 and on tv:mobilenet_v2 need no training.
RD_COMMON = ["--data", "fashion-mnist", "--input-size", "1x28x28", "--train-samples", "4000", "--val-samples", "2000"]
RD_STEPS = [  # (output folder, slimkit arguments); each step is skipped when its folder exists
    ("rd_base", ["train", "benchmarks/edge_models.py:mcunet_like", *RD_COMMON, "--epochs", "2"]),
    ("rd_patch", ["deploy", "patch", "{work}/rd_base", "--patches", "2x2", "--until", "4", "--redistribute",
                  "--input-size", "1x28x28", "--trust-code"]),
    ("rd_unchanged_ft", ["train", "{work}/rd_base", *RD_COMMON, "--epochs", "1", "--lr", "3e-4", "--trust-code"]),
    ("rd_redistributed_ft", ["train", "{work}/rd_patch/redistributed", *RD_COMMON, "--epochs", "1", "--lr", "3e-4",
                             "--trust-code"]),
]


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


def bench_redistribute(work: Path) -> dict:
    """MAC overhead before/after (mobilenet_v2, mcunet_like); accuracy after fine-tuning on Fashion-MNIST."""
    commands = _run_steps(work, RD_STEPS)
    metrics = {f: json.loads((work / f / "metrics.json").read_text()) for f, _ in RD_STEPS if f != "rd_patch"}
    patch = json.loads((work / "rd_patch" / "patch.json").read_text())
    return {"commands": commands, "fashion_mnist": {
        "patch": patch["redistribution"], "top1": {f: m["accuracy"] for f, m in metrics.items()},
        "epochs": {f: m["epochs_completed"] for f, m in metrics.items()}},
        "macs_rows": _redistribution_macs(), "environment": environment(torch.get_num_threads())}


def main(which: str) -> None:
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/edge_runs")
    benches = {"patch": bench_patch, "cascade": lambda: bench_cascade(work), "split": lambda: bench_split(work),
               "redistribute": lambda: bench_redistribute(work)}
    result = benches[which]()
    if which == "patch":
        patch_figure(result["rows"])
    path = RESULTS / "edge_bench.json"  # read just before writing: several techniques may run at once
    results = json.loads(path.read_text()) if path.exists() else {}
    results[which] = result
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "patch")
