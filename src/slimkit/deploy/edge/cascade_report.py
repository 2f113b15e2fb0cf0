"""report.json and report.html (accuracy and latency against the threshold) of a cascade directory."""

from __future__ import annotations

import html
from pathlib import Path

from slimkit.utils.io import atomic_write_json, atomic_write_text

__all__ = ["write_cascade_report"]


def _curve_png(choice: dict, heldout: dict) -> str:
    from slimkit.report.html import _png
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    rows = [r for r in choice["curve"] if r["threshold"] is not None]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot([r["threshold"] for r in rows], [r["accuracy"] for r in rows], color="tab:blue",
            label="cascade top-1 (selection images)")
    held = [r for r in heldout["curve"] if r["threshold"] is not None]
    ax.plot([r["threshold"] for r in held], [r["accuracy"] for r in held], color="tab:blue", ls=":",
            label="cascade top-1 (held-out images)")
    ax.axhline(choice["big_accuracy"], color="tab:gray", ls="--", lw=0.8, label="BIG alone")
    if choice["threshold"] is not None and choice["threshold"] != float("inf"):
        ax.axvline(choice["threshold"], color="tab:red", lw=0.8, label="chosen")
    ax.set_xlabel("confidence threshold (below: sent to BIG)")
    ax.set_ylabel("top-1 (%)")
    ax2 = ax.twinx()
    ax2.plot([r["threshold"] for r in rows], [100 * r["fraction_sent"] for r in rows], color="tab:orange",
             label="% sent to BIG")
    ax2.set_ylabel("% sent to BIG")
    fig.legend(loc="lower left")
    fig.tight_layout()
    return _png(fig)


def write_cascade_report(report: dict, out: Path, small: str, big: str, data: str) -> None:
    from slimkit.report.html import _STYLE, _table

    atomic_write_json(out / "report.json", {"small": small, "big": big, "data": data, **report})
    c, h, m, pm = report["choice"], report["heldout"], report["measured"], report["per_model_ms"]
    rows = [["SMALL alone", f"{c['small_accuracy']:.2f}", f"{h['small_accuracy']:.2f}", "0", "0",
             f"{pm['small']['median']:.3f}", ""],
            ["BIG alone", f"{c['big_accuracy']:.2f}", f"{h['big_accuracy']:.2f}", "100", "100",
             f"{m['big_alone_ms']['mean']:.3f}", f"{m['big_alone_ms']['p90']:.3f}"],
            ["cascade", f"{c['accuracy']:.2f}", f"{h['accuracy']:.2f}", f"{100 * c['fraction_sent']:.1f}",
             f"{100 * h['fraction_sent']:.1f}", f"{m['cascade_ms']['mean']:.3f}", f"{m['cascade_ms']['p90']:.3f}"]]
    parts = [f"<h1>slimkit deploy cascade: {html.escape(small)} then {html.escape(big)}</h1>",
             f"<p>data {html.escape(data)} ({report['images']} images), confidence "
             f"{report['policy']['confidence']}, threshold {report['policy']['threshold']}, ONNX Runtime "
             f"{report['threads']} thread(s); threshold chosen on {report['selection_images']} images, scored on "
             f"{h['images']} held out (seed {report['config']['seed']}); latency measured on held-out images</p>",
             _table(["", "top-1 % (selection)", "top-1 % (held out)", "% sent (selection)", "% sent (held out)",
                     "mean ms", "p90 ms"], rows),
             f"<img alt='threshold curve' src='{_curve_png(c, h)}'>"]
    atomic_write_text(out / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>slimkit "
                      f"cascade</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
