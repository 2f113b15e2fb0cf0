"""matplotlib figures shared by the reports (imported lazily; Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["cost_pareto_figure", "save_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cost_pareto_figure(labels: Sequence[str], latency: Sequence[float], axes: dict[str, Sequence[float]],
                       front: dict[str, Sequence[int]], latency_label: str):
    """One scatter per cost axis (e.g. MACs, params) against latency, with each Pareto front drawn as a line."""
    plt = _pyplot()
    fig, subplots = plt.subplots(1, len(axes), figsize=(7 * len(axes), 5.5), squeeze=False)
    for ax, (name, values) in zip(subplots[0], axes.items()):
        ax.scatter(values, latency, s=18, color="tab:blue")
        for label, x, y in zip(labels, values, latency):
            ax.annotate(label, (x, y), fontsize=6, alpha=0.8, xytext=(2, 2), textcoords="offset points")
        idx = sorted(front.get(name, []), key=lambda i: values[i])
        if idx:
            ax.plot([values[i] for i in idx], [latency[i] for i in idx], color="tab:red", lw=1.2, label="Pareto front")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(latency_label)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Save atomically (temp file + rename) in the format the suffix names."""
    import io

    from slimkit.utils.io import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())
