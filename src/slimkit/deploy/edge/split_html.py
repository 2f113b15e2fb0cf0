"""report.json and report.html of a `deploy split` run: the rate-accuracy plane of every lambda and baseline."""

from __future__ import annotations

import html
import re
from pathlib import Path

from slimkit.utils.io import atomic_write_json, atomic_write_text

__all__ = ["write_split_report", "rate_accuracy_png"]


def _family(codec: str) -> str:
    """'JPEG q30' -> 'JPEG'; the naive split is its own family."""
    return "naive split" if codec.startswith("naive") else re.sub(r" q\d+$", "", codec)


def rate_accuracy_png(summary: dict) -> str:
    """Top-1 against bytes per image (log scale): the split per lambda, each input codec over its qualities."""
    from slimkit.report.html import _png
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    points = sorted(summary["points"], key=lambda p: p["split"]["bytes_mean"])
    ax.plot([p["split"]["bytes_mean"] for p in points], [p["split"]["top1"] for p in points], "-o", color="tab:red",
            lw=2, label="split (range-coded bottleneck)", zorder=3)
    for p in points:
        ax.annotate(f"λ={p['lambda']:g}", (p["split"]["bytes_mean"], p["split"]["top1"]), fontsize=8,
                    xytext=(4, -10), textcoords="offset points")
    families: dict[str, list[dict]] = {}
    for row in summary["baselines"]:
        families.setdefault(_family(row["codec"]), []).append(row)
    for name, rows in families.items():
        rows = sorted(rows, key=lambda r: r["bytes_mean"])
        marker = "-s" if len(rows) > 1 else "D"
        ax.plot([r["bytes_mean"] for r in rows], [r["top1"] for r in rows], marker, alpha=0.8,
                label=f"{name} (input to the original model)" if name != "naive split" else rows[0]["codec"])
    ax.axhline(summary["original_top1"], color="tab:gray", ls="--", lw=0.8, label="original model, raw input")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image sent (mean, real bitstreams)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"rate against accuracy, cut after {summary['at']}")
    fig.tight_layout()
    return _png(fig)


def _rows(summary: dict) -> list[list[str]]:
    rows = []
    for p in summary["points"]:
        s, c = p["split"], p["comparison"]
        rows.append([f"split λ={p['lambda']:g}", f"{s['bytes_mean']:.1f}", f"{s['top1']:.2f}",
                     f"{c['best_input_codec']}: {c['bytes_ratio']:.2f}x bytes, {c['accuracy_gap_points']:+.2f} pt "
                     f"({'aim met' if c['aim_met'] else 'aim not met'})"])
    rows += [[r["codec"], f"{r['bytes_mean']:.1f}", f"{r['top1']:.2f}", ""] for r in summary["baselines"]]
    return rows


def write_split_report(summary: dict, out: Path) -> None:
    from slimkit.report.html import _STYLE, _table

    atomic_write_json(out / "report.json", summary)
    macs = summary["points"][0]["macs"]
    parts = [f"<h1>slimkit deploy split: cut after {html.escape(str(summary['at']))}</h1>",
             f"<p>cut {'x'.join(map(str, summary['cut_shape']))} coded as "
             f"{'x'.join(map(str, summary['code_shape']))} integer symbols; original top-1 "
             f"{summary['original_top1']:.2f}%; device part {macs['device'] / 1e6:.3f} M MACs "
             f"({100 * (macs['device_fraction'] or 0):.1f}% of the model). Bytes are real range-coder / codec "
             "outputs; the comparison is with the cheapest input codec within 0.5 point of the split's top-1.</p>",
             _table(["sender", "bytes / image", "top-1 %", "against input codecs"], _rows(summary)),
             f"<img alt='rate against accuracy' src='{rate_accuracy_png(summary)}'>"]
    atomic_write_text(out / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>slimkit split"
                      f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
