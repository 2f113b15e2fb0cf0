"""`slimkit compress`, `slimkit recipes`, `slimkit compare`: the main job and its reports."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from slimkit.cli.common import (DATA_OPT, INPUT_SIZE_OPT, MODEL_HELP, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT, console,
                                save_resolved_args)


def compress_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Run directory (e.g. runs/NAME)"),
    data: str = DATA_OPT,
    budget: Optional[str] = typer.Option(None, "--budget", help="macs=|params=|size=|latency= FRACTION, or latency=4ms"),
    recipe: str = typer.Option("default", "--recipe", help="Built-in recipe name or a YAML/JSON file"),
    override: List[str] = typer.Option([], "--set", help="Override a recipe param: STEP.KEY=VALUE (repeatable)"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads for every latency figure"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run after its last completed step"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory"),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0, max=99.99,
                                             help="Top-1 points the whole run may lose (pruning, fine-tuning, int8); "
                                                  "default: the recipe's"),
    priority: Optional[str] = typer.Option(None, "--priority",
                                           help="When the budget can't be met within --max-drop: budget (meet it, "
                                                "report the drop) or accuracy (stay within, report the latency reached)"),
    target_cpu: Optional[str] = typer.Option(None, "--target-cpu", help="CPU the int8 model ships to: auto | x86-vnni | "
                                             "x86-avx2 (7-bit weights: no int16 saturation) | arm64 (default: the "
                                             "recipe's, else auto = this machine)"),
) -> None:
    """Compress MODEL toward a budget with a recipe; writes a deployable model and an honest report."""
    from slimkit.compress.budget import parse_budget
    from slimkit.compress.pipeline import compress
    from slimkit.compress.recipe import load_recipe
    from slimkit.utils.parse import parse_input_size

    size = parse_input_size(input_size)
    chosen = load_recipe(recipe).override(list(override)).with_limit(max_drop, priority)
    if target_cpu is not None:
        chosen = chosen.with_target_cpu(target_cpu)
    if budget is not None:
        parse_budget(budget)
    con = console()
    with con.status("compressing") as status:
        def say(message: str) -> None:
            status.update(message)
            con.log(message)

        report = compress(model, chosen, budget, out_dir=out, data=data, input_size=size, trust_code=trust_code,
                          train_samples=train_samples, val_samples=val_samples, threads=threads, seed=seed,
                          resume=resume, overwrite=overwrite, say=say)
    save_resolved_args(out, "compress", {"model": model, "recipe": chosen.model_dump(), "data": data,
                                         "max_drop": chosen.max_drop, "priority": chosen.priority,
                                         "budget": report["budget"], "input_size": size, "train_samples": train_samples,
                                         "val_samples": val_samples, "threads": threads, "seed": seed,
                                         "target_cpu": target_cpu})
    _print_summary(report, out)


def _print_summary(report: dict, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{report['model']}: {report['recipe']} recipe, budget {report['budget']}")
    for col in ("model", "top-1 %", "latency ms (IQR)", "MACs (M)", "params (K)", "file (KB)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for s in [report["baseline"], *report["steps"]]:
        table.add_row(s["name"], f"{s['accuracy']:.2f}", f"{s['latency_ms']:.3f} ({s['latency']['iqr']:.3f})",
                      f"{s['macs'] / 1e6:.2f}", f"{s['params'] / 1e3:.1f}", f"{s['size_bytes'] / 1e3:.1f}")
    con = console()
    con.print(table)
    c = report["conditions"]
    con.print(f"speedup {report['speedup']:.2f}x, top-1 change {-report['accuracy_drop']:+.2f} points "
              f"(ONNX Runtime, {c['threads']} thread(s), batch 1, input {'x'.join(map(str, c['input_size']))}, "
              f"{c['repetitions']}+ interleaved calls per model, {c['val_images']} val images)")
    met = report["budget_met"]
    con.print(f"[{'green' if met else 'bold red'}]budget {report['budget']} {'met' if met else 'NOT MET'}: final "
              f"{report['budget_detail']['kind']} = {100 * report['budget_detail']['final_fraction']:.1f}% of baseline")
    limit = report["accuracy_limit"]
    ok = limit["within_limit"] and met
    con.print(f"[{'green' if ok else 'bold yellow'}]accuracy: {limit['verdict']}", highlight=False)
    warning = report["baseline_training"].get("warning")
    if warning:
        con.print(f"[bold yellow]baseline {warning}", highlight=False)
    con.print(f"report: {out / 'report.html'}  (JSON: {out / 'report.json'}; deployable: {report['final']['onnx']})")


def recipes_command(name: Optional[str] = typer.Argument(None, help="Print this recipe as YAML")) -> None:
    """List the built-in recipes, or print one as YAML."""
    from slimkit.compress.recipe import builtin_recipes, load_recipe

    if name:
        typer.echo(load_recipe(name).to_yaml(), nl=False)
        return
    for key in builtin_recipes():
        recipe = load_recipe(key)
        steps = " -> ".join(s.label for s in recipe.steps)
        console().print(f"[bold]{key}[/bold] (budget {recipe.budget}): {steps}\n  {recipe.description}")


def compare_command(
    runs: List[Path] = typer.Argument(..., help="Run directories written by slimkit compress"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Pareto plot of accuracy against latency (PNG/SVG)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON"),
) -> None:
    """Show several compress runs side by side, as a table and a Pareto plot."""
    from slimkit.compress.compare import compare_runs

    compare_runs(runs, console(), plot=plot, json_path=json_path)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_command)
    app.command("recipes")(recipes_command)
    app.command("compare")(compare_command)
