"""`slimkit zoo`: the architecture zoo (ours plus timm's lightweight families) with measured costs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import INPUT_SIZE_OPT, console


def zoo_command(
    filter_: Optional[str] = typer.Option(None, "--filter", help="Glob on model or family name, e.g. 'emov2*'"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure ONNX Runtime latency per model"),
    timm_families: bool = typer.Option(True, "--timm/--no-timm", help="Include timm's lightweight families"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the table as JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw latency against MACs and params (PNG/SVG/PDF)"),
    list_only: bool = typer.Option(False, "--list", help="Only list names; measure nothing"),
) -> None:
    """List the zoo with params, MACs and measured latency on this machine."""
    from rich.progress import Progress

    from slimkit.errors import BadInputError
    from slimkit.utils.io import atomic_write_json
    from slimkit.utils.parse import parse_input_size
    from slimkit.zoo._catalog import catalogue, measure_entry

    size = parse_input_size(input_size)
    entries = catalogue(filter_, include_timm=timm_families)
    if not entries:
        raise BadInputError(f"no zoo model matches {filter_!r}")
    if not list_only:
        with Progress(console=console(), transient=True) as progress:
            task = progress.add_task("profiling", total=len(entries))
            for entry in entries:
                progress.update(task, description=entry.name)
                measure_entry(entry, size, latency=latency, threads=threads)
                progress.advance(task)
    _print_table(entries, list_only)
    if json_path:
        import torch

        atomic_write_json(json_path, {"threads": threads or torch.get_num_threads(), "input_size": size,
                                      "models": [e.to_dict() for e in entries]})
    if plot:
        _plot(entries, plot)


def _print_table(entries, list_only: bool) -> None:
    from rich.table import Table

    table = Table(title="slimkit zoo" + ("" if list_only else " (random init; latency: median of ONNX Runtime runs)"))
    cols = ["model", "family", "source"] + ([] if list_only else ["input", "params (M)", "MACs (G)", "latency ms (IQR)"])
    for col in cols:
        table.add_column(col)
    for e in entries:
        row = [e.name, e.family, e.source]
        if not list_only:
            if e.error:
                row += ["-", "-", "-", f"[red]{e.error}[/red]"]
            else:
                lat = f"{e.latency_ms:.2f} ({e.latency_iqr_ms:.2f}) {e.runtime}" if e.latency_ms else "-"
                row += ["x".join(map(str, e.input_size)), f"{e.params / 1e6:.3f}", f"{e.macs / 1e9:.3f}", lat]
        table.add_row(*row)
    console().print(table)


def _plot(entries, path: Path) -> None:
    from slimkit.errors import BadInputError
    from slimkit.report.plots import cost_pareto_figure, save_figure
    from slimkit.zoo._catalog import pareto_front

    ok = [e for e in entries if e.latency_ms and e.macs]
    if not ok:
        raise BadInputError("nothing to plot: no model has both MACs and a measured latency (drop --no-latency)")
    lat = [e.latency_ms for e in ok]
    axes = {"MACs": [e.macs for e in ok], "params": [e.params for e in ok]}
    front = {k: pareto_front(list(zip(v, lat))) for k, v in axes.items()}
    fig = cost_pareto_figure([e.name for e in ok], lat, axes, front, "latency (ms, ONNX Runtime median)")
    save_figure(fig, path)
    console().print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo_command)
