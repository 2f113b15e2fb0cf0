"""`slimkit search`: hardware-aware architecture search (spaces, latency-table, train, run, proxies)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import console
from slimkit.errors import BadInputError

app = typer.Typer(help="Hardware-aware NAS: latency tables measured here, a once-for-all supernet, evolutionary search.",
                  no_args_is_help=True)

SPACE_ARG = typer.Argument(..., help="Built-in space (mbv2, emov2, tiny, tiny_irmb) or a space YAML file")
THREADS_OPT = typer.Option(None, "--threads", min=1, help="Intra-op threads (default: torch's)")
TRAIN_INFO = "search_train.json"


def _threads(threads: Optional[int]) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@app.command("spaces")
def spaces(show: Optional[str] = typer.Argument(None, help="Print this space as YAML (a template for your own)")) -> None:
    """List the built-in search spaces, or print one as YAML."""
    from slimkit.search.space import SPACES, load_space

    if show:
        typer.echo(load_space(show).to_yaml())
        return
    for name in SPACES.names():
        sp = load_space(name)
        console().print(f"{name:9s} {sp.size():.3g} children  {SPACES.meta(name).get('description', '')}")


@app.command("latency-table")
def latency_table(
    space: str = SPACE_ARG,
    out: Path = typer.Option(..., "--out", "-o", help="Table file (JSON)"),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="onnxruntime (the only one so far)"),
    threads: Optional[int] = THREADS_OPT,
    repetitions: int = typer.Option(40, "--repetitions", min=5, help="Timed calls per part, split over rounds"),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Interleaved rounds over all parts"),
    calibrate: int = typer.Option(12, "--calibrate", min=0, help="Whole children measured to fit the correction"),
    validate: int = typer.Option(0, "--validate", min=0, help="Also time N other children in the same rounds and "
                                 "report the prediction error"),
    statistic: str = typer.Option("min", "--statistic", help="median | min: the per-part figure predictions add "
                                  "(min resists a busy machine)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Time every block choice of SPACE on this machine and write a latency table with its conditions."""
    from rich.progress import Progress

    from slimkit.search.latency import space_parts
    from slimkit.search.space import load_space
    from slimkit.search.table import build_table

    if runtime.lower() not in ("onnxruntime", "onnx", "ort"):
        raise BadInputError(f"--runtime {runtime!r}: only onnxruntime latency tables are built so far")
    sp = load_space(space)
    n = _threads(threads)
    with Progress(console=console(), transient=True) as bar:
        task = bar.add_task("export + verify parts", total=len(space_parts(sp)) + 1 + max(calibrate, 2) + validate)
        table = build_table(sp, n, repetitions=repetitions, rounds=rounds, calibrate=calibrate, validate=validate,
                            seed=seed, statistic=statistic, progress=lambda: bar.advance(task))
    table.save(out)
    fit = table.calibration.get("fit_errors", {})
    console().print(f"{len(table.entries)} parts timed ({n} threads, ONNX Runtime, {statistic}); correction "
                    f"{table.scale:.3f} x sum + {table.offset_ms:.4f} ms; calibration within 10%: "
                    f"{fit.get('within_10pct', float('nan')):.0%} -> {out}")
    if validate:
        v = table.calibration["validation"]
        console().print(f"validation on {v['n']} children: {v['within_10pct']:.0%} within ±10%, "
                        f"mean |error| {v['mean_abs_pct']:.1f}%, max {v['max_abs_pct']:.1f}%")


@app.command("predict")
def predict(table: Path = typer.Argument(..., help="Latency table (JSON)"),
            arch: Optional[str] = typer.Option(None, "--arch", help="Architecture JSON (default: largest and smallest)"),
            threads: Optional[int] = THREADS_OPT) -> None:
    """Predict latency from a table (warns loudly when the table was measured elsewhere)."""
    from slimkit.search.space import Arch
    from slimkit.search.table import LatencyTable

    tab = LatencyTable.load(table)
    _warn_conditions(tab, threads)
    archs = [Arch.model_validate(json.loads(arch))] if arch else [tab.space.largest(), tab.space.smallest()]
    for a in archs:
        console().print(f"{tab.predict_ms(tab.space.validate_arch(a)):.4f} ms  {a.key()}", markup=False)  # JSON, not markup


@app.command("pick")
def pick(run_dir: Path = typer.Argument(..., help="A `slimkit search train --sorted N` run directory"),
         budget: str = typer.Option(..., "--budget", help="macs=F, params=F, size=F (fractions of the largest level) "
                                    "or level=I"),
         out: Path = typer.Option(..., "--out", "-o", help="Model directory to write the chosen sub-model to")) -> None:
    """Write the largest nested sub-model of a SortedNet run within --budget as an ordinary model directory."""
    from slimkit.models import load_model
    from slimkit.models.modeldir import is_model_dir, save_model_dir

    if not is_model_dir(run_dir):
        raise BadInputError(f"{run_dir} is not a model directory (train one with `slimkit search train --sorted N`)")
    child, info = load_model(str(run_dir), budget=budget)
    level = child.spec
    save_model_dir(child, info, out, extra={"sorted": {"run": str(run_dir), "budget": budget}})
    console().print(f"budget {budget}: sub-model at {level['resolution']} px, {len(level['blocks'])} blocks -> {out}")


def _warn_conditions(table, threads: Optional[int]) -> list[str]:
    problems = table.check_conditions(threads)
    for p in problems:
        typer.secho(f"WARNING: latency table measured on another machine or setting ({p}); its predictions do not "
                    "hold here: rebuild it with `slimkit search latency-table`", fg="red", bold=True, err=True)
    return problems


def register(root: typer.Typer) -> None:
    from slimkit.cli import search_proxies_cmd, search_run_cmd  # noqa: F401  (add train, run, proxies to `app`)

    root.add_typer(app, name="search")
