"""`slimkit prune MODEL --target macs=0.5 --out DIR [--schedule iterative|lapp|precrop]`: prune to a budget,
write a reloadable model directory. The command parses; `prune_` (through PruneJob) does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import DATA_OPT, INPUT_SIZE_OPT, MODEL_HELP, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT

__all__ = ["register"]


def prune_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory (written atomically)"),
    target: Optional[str] = typer.Option(None, "--target", help="macs=F | params=F | latency=F (fraction of the original)"),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Fixed fraction of channels to remove instead of a target"),
    criterion: Optional[str] = typer.Option(None, "--criterion", help="l1, l2 (default), bn_scale, taylor, random, lrp"),
    allocation: Optional[str] = typer.Option(None, "--allocation",
                                             help="uniform | global (default) | adaptive (cost-aware) | latency-table"),
    latency_table: Optional[Path] = typer.Option(None, "--latency-table",
                                                 help="Per-layer latency table of MODEL (JSON): read if it exists, "
                                                      "else timed here and saved; implies --allocation latency-table"),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="Channel multiple (default 8; latency targets measure 1/8/16)"),
    unstructured: Optional[float] = typer.Option(None, "--unstructured", help="Extra weight sparsity 0..1 (gradual if --epochs)"),
    unstructured_scope: Optional[str] = typer.Option(None, "--unstructured-scope", help="global (default) | layer | lamp"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A PruneConfig JSON file (flags override it)"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="oneshot (default) | iterative | lapp | precrop"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="iterative: prune -> train stages (default 3)"),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_OPT.help),
    epochs: Optional[float] = typer.Option(None, "--epochs", min=0.0,
                                           help="Training epochs in all, fractions allowed (needs --data): after "
                                                "pruning, over the iterative stages, or during LAPP"),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Training learning rate (SGD, default 0.01)"),
    kd: bool = typer.Option(False, "--kd", help="Distil from the unpruned model while training"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Classifier size (default: the data's)"),
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure ONNX Runtime latency before/after"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime threads for latency (default 1)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)"),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code to import it"),
) -> None:
    """Prune MODEL to a budget; writes OUT/ (model directory), OUT/report.json and OUT/args.json."""
    args = dict(locals())  # first statement: only the options are local yet
    from slimkit.compress.prune.job import PruneJob, run_job

    job = PruneJob.from_cli(args)  # validates everything before any work or output
    report = run_job(job)
    _print_summary(report, job.out)


def _print_summary(report: dict, out: Path) -> None:
    from slimkit.cli.common import console

    con = console()
    b, a = report["before"], report["after"]
    con.print(f"[bold]pruned[/bold] -> {out}")
    for key in ("macs", "params", "latency_ms", "accuracy"):
        if b.get(key) is not None and a.get(key) is not None:
            ratio = a[key] / b[key] if b[key] else float("nan")
            con.print(f"  {key:10s} {b[key]:>14,.4g} -> {a[key]:>14,.4g}  (x{ratio:.3f})")
    if report.get("target"):
        con.print(f"  target {report['target']}: achieved {report['achieved']:.3f}")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)
