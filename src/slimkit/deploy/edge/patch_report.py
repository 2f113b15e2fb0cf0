"""What `slimkit deploy patch` reports: memory before/after (plan arena, the profiler's lifetime estimate,
the allocator's measured peak), MACs and halo overhead, output parity, and the per-layer memory plan."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimkit.deploy.edge.graph import Traced
from slimkit.deploy.edge.memplan import MemoryPlan, patched_plan, whole_plan
from slimkit.deploy.edge.patch import Candidate
from slimkit.utils.io import atomic_write_json, atomic_write_text

__all__ = ["measure_patch", "write_patch_outputs"]


def _both(fp32_bytes: int | None) -> dict[str, int | None]:
    # every activation of the float model is a float32 tensor, so int8 storage is exactly a quarter
    return {"fp32": fp32_bytes, "int8": None if fp32_bytes is None else fp32_bytes // 4}


def measure_patch(model: nn.Module, patched: nn.Module, traced: Traced, chosen: Candidate, seed: int = 0,
                  stream_input: bool = False) -> dict:
    """Measure both modules on one random image (models unchanged); returns the report dict."""
    from slimkit.profile.counter import count_macs
    from slimkit.profile.memory import measure_peak_activation_bytes

    x = torch.randn(1, *traced.input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        whole = model(x)
        diff = (whole - patched(x)).abs().max().item()
    before, after = count_macs(model, x), count_macs(patched, x)
    plan_before, plan_after = whole_plan(traced), patched_plan(traced, chosen.plan, stream_input)
    return {
        "input_size": list(traced.input_size), "cut": chosen.plan.cut.label, "cut_node": chosen.plan.cut.node,
        "grid": list(chosen.plan.grid), "cut_shape": list(traced.shapes[chosen.plan.cut.node][1:]),
        "tiles": [list(r) for r in chosen.plan.tiles], "stream_input": stream_input,
        "max_abs_diff": diff, "output_max_abs": whole.abs().max().item(),
        "arena_bytes": {"before": {"int8": plan_before.arena_elements, "fp32": 4 * plan_before.arena_elements},
                        "after": {"int8": plan_after.arena_elements, "fp32": 4 * plan_after.arena_elements}},
        "lifetime_estimate_bytes": {"before": _both(before.peak_activation_bytes),
                                    "after": _both(after.peak_activation_bytes)},
        "allocator_peak_bytes": {"before": _both(measure_peak_activation_bytes(model, x)),
                                 "after": _both(measure_peak_activation_bytes(patched, x))},
        "macs": {"before": before.total, "after": after.total,
                 "overhead": after.total / before.total - 1 if before.total else 0.0},
        "_plans": {"before": plan_before, "after": plan_after},
    }


def _plan_png(before: MemoryPlan, after: MemoryPlan) -> str:
    from slimkit.report.html import _png
    from slimkit.report.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for plan, label, color in ((before, "whole", "tab:gray"), (after, "patched head + whole tail", "tab:blue")):
        ax.plot([r.live_elements / 1024 for r in plan.rows], label=label, color=color)
        ax.axhline(plan.arena_elements / 1024, color=color, ls="--", lw=0.8)
    ax.set_xlabel("op (execution order; patched ops show their largest patch)")
    ax.set_ylabel("live activations (KB at int8)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("activation memory plan per op; dashed: arena size")
    fig.tight_layout()
    return _png(fig)


def _kb(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 1024:.1f}"


def _rows(r: dict) -> list[list[Any]]:
    rows = []
    for key, label in (("arena_bytes", "arena (memory plan)"), ("lifetime_estimate_bytes", "profiler lifetime estimate"),
                       ("allocator_peak_bytes", "allocator measured peak")):
        b, a = r[key]["before"], r[key]["after"]
        ratio = f"{b['fp32'] / a['fp32']:.2f}x" if a["fp32"] and b["fp32"] else "n/a"
        rows.append([label, _kb(b["int8"]), _kb(a["int8"]), _kb(b["fp32"]), _kb(a["fp32"]), ratio])
    return rows


def render_patch_html(r: dict, model_name: str) -> str:
    from slimkit.report.html import _STYLE, _table

    plans = r["_plans"]
    m = r["macs"]
    parts = [
        f"<h1>slimkit deploy patch: {html.escape(model_name)}</h1>",
        f"<p>input {'x'.join(map(str, r['input_size']))}, head up to <b>{html.escape(r['cut'])}</b> "
        f"(map {'x'.join(map(str, r['cut_shape']))}) run as {r['grid'][0]}x{r['grid'][1]} patches; "
        f"max |whole - patched| = {r['max_abs_diff']:.2e} (outputs up to {r['output_max_abs']:.2e})</p>",
        _table(["peak activation memory (KB)", "int8 before", "int8 after", "fp32 before", "fp32 after", "cut"],
               _rows(r)),
        f"<p>MACs {m['before'] / 1e6:.2f} M whole, {m['after'] / 1e6:.2f} M patched: halo overhead "
        f"{100 * m['overhead']:+.1f}%.</p>",
        f"<img alt='memory plan' src='{_plan_png(plans['before'], plans['after'])}'>",
        *_redistribution_html(r.get("redistribution")),
    ]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>slimkit patch</title><style>{_STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def _redistribution_html(d: dict | None) -> list[str]:
    from slimkit.report.html import _table

    if d is None:
        return []
    rows = [[name, f"{v['macs']['before'] / 1e6:.2f}", f"{v['macs']['after'] / 1e6:.2f}",
             f"{100 * v['macs']['overhead']:+.1f}%", _kb(v["arena_bytes"]["after"]["int8"]), f"{v['max_abs_diff']:.1e}"]
            for name, v in (("unchanged", d["unchanged"]), ("redistributed", d["redistributed"]))]
    changes = (f"dropped blocks: {', '.join(d['dropped_blocks']) or 'none'}; head kernels to 3x3: "
               f"{', '.join(d['shrunk_kernels']) or 'none'}; tail depthwise 3x3 to 5x5: "
               f"{', '.join(d['grown_kernels']) or 'none'}")
    return ["<h2>Receptive-field redistribution</h2>", f"<p>{html.escape(changes)}. The redistributed model "
            "computes another function: fine-tune it (saved in redistributed/).</p>",
            _table(["model", "MACs whole (M)", "MACs patched (M)", "halo overhead", "arena int8 patched (KB)",
                    "max |whole - patched|"], rows)]


def write_patch_outputs(r: dict, out: Path, model_name: str) -> None:
    """patch.json (report), memory_plan.json (per-layer, both schedules), report.html, into `out`."""
    plans = r["_plans"]
    public = {k: v for k, v in r.items() if not k.startswith("_")}
    atomic_write_json(out / "patch.json", {"model": model_name, **public})
    atomic_write_json(out / "memory_plan.json", {"whole": plans["before"].to_dict(), "patched": plans["after"].to_dict()})
    atomic_write_text(out / "report.html", render_patch_html(r, model_name))
