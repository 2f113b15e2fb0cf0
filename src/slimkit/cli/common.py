"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import typer

from slimkit.utils.io import save_resolved_args  # noqa: F401  (re-exported for the commands)

MODEL_HELP = ("timm:NAME, tv:NAME, NAME, a slimkit model directory (DIR@macs=0.5: a SortedNet run's sub-model), "
              "or path/to/file.py:factory")
INPUT_SIZE_OPT = typer.Option(None, "--input-size", help="CxHxW, e.g. 3x32x32 (default: the model's own)")
DATA_OPT = typer.Option("digits", "--data", help="digits, fashion-mnist[:PATH], imagefolder:PATH, cifar10:PATH, hf:PATH, synthetic[:N]")
TRAIN_SAMPLES_OPT = typer.Option(None, "--train-samples", min=1, help="Use at most N training images")
VAL_SAMPLES_OPT = typer.Option(None, "--val-samples", min=1, help="Use at most N validation images")


def console():
    from rich.console import Console

    return Console()
