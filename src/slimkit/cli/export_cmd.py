"""`slimkit export MODEL --format onnx --out PATH`: export, then check against PyTorch every time."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import INPUT_SIZE_OPT, MODEL_HELP, console

__all__ = ["register", "report_path_for"]


def report_path_for(path: str | Path) -> Path:
    """The report beside an export: model.onnx -> model.report.json."""
    path = Path(path)
    return path.with_name(f"{path.stem}.report.json")


def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output file, e.g. model.onnx"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Export format (onnx)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    static_batch: bool = typer.Option(False, "--static-batch", help="Fix the batch axis at 1 (default: dynamic)"),
    exporter: str = typer.Option("auto", "--exporter", help="auto (TorchScript, then dynamo), torchscript or dynamo"),
    atol: float = typer.Option(1e-4, "--atol", min=0.0, help="Parity tolerance, relative to max(1, output scale)"),
) -> None:
    """Export a model (ONNX) and verify ONNX Runtime's outputs against PyTorch's."""
    from slimkit.deploy.registry import get_exporter
    from slimkit.models import load_model
    from slimkit.utils.io import atomic_write_json
    from slimkit.utils.parse import parse_input_size

    export_fn = get_exporter(fmt)
    net, info = load_model(model)
    size = parse_input_size(input_size) or tuple(info.input_size)
    report = export_fn(net, size, out, opset=opset, dynamic_batch=not static_batch, exporter=exporter, atol=atol)
    args = {"model": model, "out": str(out), "format": fmt, "opset": opset, "input_size": list(size),
            "dynamic_batch": not static_batch, "exporter": exporter, "atol": atol}
    rpath = atomic_write_json(report_path_for(out), {"model": info.to_dict(), **report.to_dict(), "args": args})
    c = report.check
    console().print(
        f"exported {out} ({report.exporter} exporter, opset {report.opset}, {report.size_bytes / 1e6:.2f} MB, "
        f"input {'x'.join(map(str, size))}, batch {'dynamic' if not static_batch else 1})\n"
        f"check passed: max |PyTorch - ONNX Runtime| = {c.max_abs_diff:.2e} <= tolerance {c.tolerance:.2e} "
        f"(batches {c.batch_sizes}, onnxruntime {c.onnxruntime})\nreport: {rpath}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
