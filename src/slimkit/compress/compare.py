"""Several compress runs side by side: a table and an accuracy-latency Pareto plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError

__all__ = ["load_run", "compare_runs"]


def load_run(path: Path) -> dict[str, Any]:
    report = Path(path) / "report.json"
    if not report.is_file():
        hint = " (the run is incomplete: resume it first)" if (Path(path) / "INCOMPLETE").exists() else ""
        raise BadInputError(f"{path} has no report.json{hint}")
    try:
        return json.loads(report.read_text())
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{report} is corrupt: {exc}") from exc


def _rows(runs: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in runs:
        r = load_run(path)
        rows.append({"run": str(path), "model": r["model"], "recipe": r["recipe"], "budget": r["budget"],
                     "budget_met": r["budget_met"], "baseline_accuracy": r["baseline"]["accuracy"],
                     "accuracy": r["final"]["accuracy"], "latency_ms": r["final"]["latency_ms"],
                     "baseline_latency_ms": r["baseline"]["latency_ms"], "speedup": r["speedup"],
                     "macs": r["final"]["macs"], "params": r["final"]["params"], "size_bytes": r["final"]["size_bytes"],
                     "threads": r["conditions"]["threads"]})
    return rows


def compare_runs(runs: list[Path], console, plot: Path | None = None, json_path: Path | None = None) -> list[dict]:
    from rich.table import Table

    from slimkit.utils.io import atomic_write_json

    rows = _rows(runs)
    table = Table(title="compress runs (latencies from each run's own interleaved measurement)")
    for col in ("run", "recipe", "budget", "met", "top-1 %", "latency ms", "speedup", "MACs (M)", "file (KB)"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run"], r["recipe"], r["budget"], "yes" if r["budget_met"] else "NO",
                      f"{r['accuracy']:.2f} ({r['accuracy'] - r['baseline_accuracy']:+.2f})", f"{r['latency_ms']:.3f}",
                      f"{r['speedup']:.2f}x", f"{r['macs'] / 1e6:.2f}", f"{r['size_bytes'] / 1e3:.1f}")
    console.print(table)
    if json_path:
        atomic_write_json(json_path, {"runs": rows})
    if plot:
        _plot(rows, plot)
        console.print(f"wrote {plot}")
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    from slimkit.report.plots import _pyplot, save_figure
    from slimkit.zoo._catalog import pareto_front

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    xs, ys = [r["latency_ms"] for r in rows], [r["accuracy"] for r in rows]
    ax.scatter(xs, ys, color="tab:blue")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(Path(r["run"]).name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = sorted(pareto_front([(x, -y) for x, y in zip(xs, ys)]), key=lambda i: xs[i])
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", label="Pareto front")
    ax.set_xlabel("latency (ms, ONNX Runtime median)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
