"""The demo's figures: runs the `make demo` compress command and records its table.

The command is read from the Makefile's `demo` target, so the figures always come from what `make demo`
runs (the embedded digits CNN trained, pruned toward the latency budget, fine-tuned with distillation,
quantized to int8). The run times its models (prune's latency search, the final interleaved measurement
on ONNX Runtime), so run it alone on the machine:

    flock -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/demo_bench.py

Writes benchmarks/results/demo_bench_<int8 path>.json (x86-vnni, x86-avx2, ...): per stage top-1, median latency and IQR, MACs, params and file
size, with the speedup, the budget verdict, the run's conditions and the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from _common import ROOT, environment, path_tag, write_results


def demo_command() -> list[str]:
    """The Makefile's `demo` recipe, with the venv's `slimkit` replaced by this interpreter's."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    recipe = lines[lines.index(next(ln for ln in lines if ln.startswith("demo:"))) + 1].strip()
    words = shlex.split(recipe)
    assert words[0].endswith("/bin/slimkit"), recipe
    return [sys.executable, "-m", "slimkit.cli.main", *words[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    command = demo_command()
    out = ROOT / command[command.index("--out") + 1]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    # Its timings (and so the pruned widths, chosen by measured latency) are only worth quoting from a quiet machine.
    quiet = max(load_before, os.getloadavg()[0]) <= (os.cpu_count() or 1)
    report = json.loads((out / "report.json").read_text())
    rows = [{"stage": s["name"], "accuracy": s["accuracy"], "latency_ms": s["latency_ms"],
             "latency_iqr_ms": s["latency"]["iqr"], "repetitions": s["latency"]["repetitions"], "macs": s["macs"],
             "params": s["params"], "size_bytes": s["size_bytes"]} for s in [report["baseline"], *report["steps"]]]
    prune = report["steps"][0].get("details", {})
    env = environment(report["conditions"]["threads"])
    # One file per int8 path: the demo's cut and speedup depend on the CPU's int8 kernels.
    write_results(f"demo_bench_{path_tag(env)}", {
        "command": "make demo: " + " ".join(command[3:]), "wall_s": round(wall, 1), "quiet_machine": quiet,
        "load_average_before": load_before, "stages": rows,
        "speedup": report["speedup"], "accuracy_drop_points": report["accuracy_drop"], "budget": report["budget"],
        "budget_met": report["budget_met"], "final_fraction": report["budget_detail"]["final_fraction"],
        "prune_target": prune.get("config", {}).get("target"), "int8_gain": prune.get("target_from", {}).get("int8_gain"),
        "conditions": report["conditions"], "environment": env})
    print("| model | top-1 % | latency ms (IQR) | MACs (M) | params (K) | file (KB) |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['accuracy']:.2f} | {r['latency_ms']:.3f} ({r['latency_iqr_ms']:.3f}) | "
              f"{r['macs'] / 1e6:.2f} | {r['params'] / 1e3:.1f} | {r['size_bytes'] / 1e3:.1f} |")
    print(f"speedup {report['speedup']:.2f}x, top-1 change {-report['accuracy_drop']:+.2f} points, budget "
          f"{report['budget']} {'met' if report['budget_met'] else 'NOT met'} "
          f"({100 * report['budget_detail']['final_fraction']:.1f}% of the baseline), {wall:.0f} s wall")
    if not quiet:
        print(f"WARNING: load average {load_before:.1f} > {os.cpu_count()} cores during the run: do not quote these timings")


if __name__ == "__main__":
    main()
