"""Rich tables for a Profile (formatting is kept apart from measuring)."""

from __future__ import annotations

from slimkit.profile.profiler import Profile

__all__ = ["render_profile", "human"]


def human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3f} {suffix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _summary_table(p: Profile):
    from rich.table import Table

    size = "x".join(map(str, p.input_size))
    table = Table(title=f"{p.model}  (batch {p.batch}, input {size})", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    table.add_row("MACs", f"{human(p.macs)}  ({p.macs:,})")
    table.add_row("elementwise ops", f"{human(p.elementwise_ops)}  (not in MACs)")
    table.add_row("params", f"{human(p.params)}  ({p.trainable_params:,} trainable)")
    table.add_row("file size", f"fp32 {human(p.size_bytes['fp32'], 'B')}, int8 ~{human(p.size_bytes['int8_estimate'], 'B')}")
    table.add_row("download (fp32)", ", ".join(f"{k.upper()} {v:.2f} s" for k, v in p.download_s.items()))
    measured = p.peak_activation_bytes_measured
    peak = f"{human(p.peak_activation_bytes, 'B')} estimated"
    table.add_row("peak activations", peak + (f", {human(measured, 'B')} measured" if measured else ""))
    for runtime, t in p.latency_ms.items():
        tp = p.throughput.get(runtime, {})
        table.add_row(
            f"latency {runtime}",
            f"median {t['median']:.3f} ms, p90 {t['p90']:.3f} ms, IQR {t['iqr']:.3f} ms, n={t['repetitions']}"
            f"  |  {tp.get('gmacs_per_s', 0):.1f} GMAC/s"
            + (f" = {100 * tp['fraction_of_peak']:.1f}% of peak" if tp.get("fraction_of_peak") else ""),
        )
    for runtime, err in p.latency_errors.items():
        table.add_row(f"latency {runtime}", f"[red]unavailable: {err}[/red]")
    if len(p.latency_ms) > 2:
        fastest = min(p.latency_ms, key=lambda r: p.latency_ms[r]["median"])
        ratios = ", ".join(f"{r} {p.latency_ms[r]['median'] / p.latency_ms[fastest]['median']:.2f}x"
                           for r in p.latency_ms if r != fastest)
        table.add_row("fastest runtime", f"{fastest} (the others, time relative to it: {ratios}; interleaved, "
                      f"batch {p.batch}, {p.throughput.get('threads')} thread(s))")
    path = p.environment.get("int8_path")
    if path:
        table.add_row("int8 path", f"{path}" + ("  (u8*s8 pair sums saturate int16: slimkit quantizes weights to 7 bits)"
                                                 if path == "x86-avx2" else "  (exact int32 accumulation)"))
    if p.throughput.get("matmul_ceiling_gmacs"):
        table.add_row("conditions", f"{p.throughput['threads']} threads; matmul ceiling "
                      f"{p.throughput['matmul_ceiling_gmacs']:.1f} GMAC/s (best fp32 square matmul, same run)")
    return table


def _by_type_table(p: Profile):
    from rich.table import Table

    table = Table(title="MACs by type")
    for col in ("type", "MACs", "%"):
        table.add_column(col, justify="right" if col != "type" else "left")
    for kind, macs in sorted(p.macs_by_type.items(), key=lambda kv: -kv[1]):
        table.add_row(kind, f"{macs:,}", f"{100 * macs / max(p.macs, 1):.2f}")
    return table


def _layers_table(p: Profile, limit: int):
    from rich.table import Table

    rows = sorted(p.layers, key=lambda r: -r.macs)
    shown = rows if limit <= 0 else rows[:limit]
    title = "Layers" + ("" if len(shown) == len(rows) else f" (top {len(shown)} of {len(rows)} by MACs; --layers 0 for all)")
    table = Table(title=title)
    for col in ("name", "type", "output", "params", "MACs", "%"):
        table.add_column(col, justify="left" if col in ("name", "type", "output") else "right")
    for r in shown:
        shape = "x".join(map(str, r.output_shape)) if r.output_shape else "-"
        table.add_row(r.name, r.type, shape, f"{r.params:,}", f"{r.macs:,}", f"{r.percent:.2f}")
    return table


def render_profile(p: Profile, console, layers: int = 20) -> None:
    console.print(_summary_table(p))
    console.print(_by_type_table(p))
    if layers >= 0:
        console.print(_layers_table(p, layers))
