"""A self-contained HTML report (inline PNG plots, no external assets) for a compress run."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from slimkit.utils.io import atomic_write_text

__all__ = ["write_html_report", "render_html_report"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ok{color:#087f23}.bad{color:#b00020}
img{max-width:100%;border:1px solid #eee}
"""


def _png(fig) -> str:
    from slimkit.report.plots import _pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pareto_png(stages: list[dict]) -> str:
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "latency_ms", "latency (ms, ONNX Runtime median)"), (axes[1], "macs", "MACs")):
        xs, ys = [s[key] for s in stages], [s["accuracy"] for s in stages]
        ax.plot(xs, ys, "-o", color="tab:blue", alpha=0.6)
        for s, x, y in zip(stages, xs, ys):
            ax.annotate(s["name"], (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("accuracy against cost for every intermediate model")
    fig.tight_layout()
    return _png(fig)


def _curve_png(report: dict) -> str:
    """Top-1 against measured latency for the baseline, every cut tried and the final model, with the limits."""
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    points, base = report["curve"], report["baseline"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cuts = [p for p in points if p["kind"] == "cut"]
    ax.plot([base["latency_ms"]] + [p["latency_ms"] for p in cuts], [base["accuracy"]] + [p["accuracy"] for p in cuts],
            "-o", color="tab:blue", label="cuts tried (fine-tuned, fp32)")
    for p in points:
        marker = {"baseline": "s", "final": "*"}.get(p["kind"], "o")
        ax.scatter([p["latency_ms"]], [p["accuracy"]], marker=marker, s=90 if marker == "*" else 40,
                   color="tab:red" if p["kind"] == "final" else "tab:blue", zorder=3)
        ax.annotate(p["name"] + (" (kept)" if p.get("kept") else ""), (p["latency_ms"], p["accuracy"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    limit = report["accuracy_limit"]
    if limit.get("max_drop") is not None:
        ax.axhline(base["accuracy"] - limit["max_drop"], color="tab:orange", ls="--", label=f"max_drop {limit['max_drop']:g}")
    if report["budget_detail"]["kind"] == "latency":
        ax.axvline(report["budget_detail"]["limit"], color="tab:green", ls=":", label=f"budget {report['budget']}")
    ax.set_xlabel("latency (ms, ONNX Runtime median, batch 1)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("what each cut costs: accuracy against latency")
    fig.tight_layout()
    return _png(fig)


def _curve_rows(report: dict) -> list[list[Any]]:
    return [[p["name"], f"{p['accuracy']:.2f}", f"{p['drop']:+.2f}", f"{p['latency_ms']:.3f}",
             f"{100 * p['latency_fraction']:.1f}%", "yes" if p.get("kept") else ""] for p in report.get("curve", [])]


def _layers_png(layers: list[dict]) -> str:
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    shown = layers[:60]
    fig, ax = plt.subplots(figsize=(12, max(3.5, 0.18 * len(shown) + 1)))
    idx = list(range(len(shown)))
    ax.barh([i + 0.2 for i in idx], [r["width_before"] for r in shown], height=0.4, label="before", color="tab:gray")
    ax.barh([i - 0.2 for i in idx], [r["width_after"] or 0 for r in shown], height=0.4, label="after", color="tab:blue")
    ax.set_yticks(idx, [r["name"] for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("output channels / features")
    ax.legend()
    ax.set_title("per-layer width before and after" + ("" if len(layers) <= 60 else f" (first 60 of {len(layers)})"))
    fig.tight_layout()
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt_stage(s: dict) -> list[Any]:
    lat = s.get("latency", {})
    return [s["name"], f"{s['accuracy']:.2f}", f"{s['latency_ms']:.3f} ± {lat.get('iqr', 0):.3f}",
            f"{s['macs'] / 1e6:.2f}", f"{s['params'] / 1e3:.1f}", f"{s['size_bytes'] / 1e3:.1f}"]


def render_html_report(report: dict[str, Any]) -> str:
    stages = [report["baseline"], *report["steps"]]
    detail = report["budget_detail"]
    verdict_class = "ok" if report["budget_met"] else "bad"
    verdict = (f"Budget {report['budget']} {'met' if report['budget_met'] else 'NOT met'}: final {detail['kind']} is "
               f"{100 * detail['final_fraction']:.1f}% of the baseline (limit {detail['limit']:.4g}, final "
               f"{detail['final']:.4g}, margin {100 * detail['margin']:+.1f}% of the limit).")
    cond = report["conditions"]
    headers = ["model", "top-1 %", "latency ms (median ± IQR)", "MACs (M)", "params (K)", "file (KB)"]
    env_rows = [[k, v] for k, v in report["environment"].items()]
    cond_rows = [[k, v] for k, v in cond.items()]
    parts = [
        f"<h1>slimkit compress: {html.escape(report['model'])}</h1>",
        f"<p>recipe <b>{html.escape(report['recipe'])}</b>, data <b>{html.escape(report['data'])}</b></p>",
        f"<p class='{verdict_class}'><b>{html.escape(verdict)}</b></p>",
        f"<p>Speedup {report['speedup']:.2f}x (ONNX Runtime, same run), top-1 change "
        f"{-report['accuracy_drop']:+.2f} points.</p>",
        f"<p class='{'ok' if report['accuracy_limit']['within_limit'] else 'bad'}'><b>Accuracy: "
        f"{html.escape(report['accuracy_limit']['verdict'])}</b></p>",
        *([f"<p class='bad'><b>Baseline {html.escape(report['baseline_training']['warning'])}</b></p>"]
          if report["baseline_training"].get("warning") else []),
        "<h2>Baseline and final</h2>", _table(headers, [_fmt_stage(report["baseline"]), _fmt_stage(report["final"])]),
        "<h2>Every step</h2>", _table(headers, [_fmt_stage(s) for s in stages]),
        "<h2>Accuracy against latency: the cuts tried</h2>", f"<img alt='accuracy-latency curve' src='{_curve_png(report)}'>",
        _table(["model", "top-1 %", "drop (points)", "latency ms", "of baseline", "kept"], _curve_rows(report)),
        "<h2>Pareto</h2>", f"<img alt='pareto plot' src='{_pareto_png(stages)}'>",
        "<h2>Layers</h2>", f"<img alt='per-layer widths' src='{_layers_png(report['layers'])}'>",
        "<h2>Conditions</h2>", _table(["condition", "value"], cond_rows),
        "<h2>Environment</h2>", _table(["item", "value"], env_rows),
    ]
    return f"<!doctype html><html><head><meta charset='utf-8'><title>slimkit report</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"


def write_html_report(report: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, render_html_report(report))
