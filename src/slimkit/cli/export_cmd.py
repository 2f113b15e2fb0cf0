"""`slimkit export MODEL --to onnx,openvino,tflite,executorch --out DIR` (or `--format onnx --out FILE`).

Every artifact is checked in its own runtime against PyTorch before it is kept.
"""

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
    out: Path = typer.Option(..., "--out", "-o", help="Output file (--format) or directory (--to)"),
    to: Optional[str] = typer.Option(None, "--to", help="Runtimes, comma-separated: onnx,openvino,tflite,executorch "
                                     "or all (all installed ones); writes DIR/model.* and DIR/deploy.json"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Single-file export: onnx, openvino, tflite or executorch"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    static_batch: bool = typer.Option(False, "--static-batch", help="Fix the batch axis at 1 (default: dynamic)"),
    exporter: str = typer.Option("auto", "--exporter", help="auto (TorchScript, then dynamo), torchscript or dynamo"),
    atol: float = typer.Option(1e-4, "--atol", min=0.0, help="Parity tolerance, relative to max(1, output scale)"),
    int8: Optional[Path] = typer.Option(None, "--int8", help="A `slimkit quantize` output dir: int8 for every runtime "
                                        "from its QDQ ONNX and its calibration images (--to only)"),
    check_data: str = typer.Option("digits", "--check-data", help="Real images for the parity checks (--to only)"),
    threads: int = typer.Option(1, "--threads", min=1, help="Threads for the latency table (--to only)"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Time every artifact interleaved (--to only)"),
    repetitions: int = typer.Option(50, "--repetitions", min=3, help="Timed calls per artifact (--to only)"),
) -> None:
    """Export a model to one or more runtimes, each checked in its own runtime against PyTorch."""
    if to is not None:
        from slimkit.cli._export_multi import export_to_runtimes

        export_to_runtimes(model, out, to, input_size=input_size, int8_dir=int8, check_data=check_data,
                           threads=threads, latency=latency, repetitions=repetitions, atol=atol)
        return
    if int8 is not None:
        from slimkit.errors import BadInputError

        raise BadInputError("--int8 needs --to (a directory with one artifact per runtime)")
    from slimkit.deploy.registry import get_exporter
    from slimkit.models import load_model
    from slimkit.utils.io import atomic_write_json
    from slimkit.utils.parse import parse_input_size

    export_fn = get_exporter(fmt)
    net, info = load_model(model)
    size = parse_input_size(input_size) or tuple(info.input_size)
    if fmt.strip().lower() != "onnx":
        _print_artifact(get_exporter(fmt)(net, size, out, atol=atol), out, info)
        return
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


def _print_artifact(report, out: Path, info) -> None:
    from slimkit.utils.io import atomic_write_json

    rpath = atomic_write_json(report_path_for(out), {"model": info.to_dict(), **report.to_dict()})
    c = report.check
    console().print(f"exported {report.path} ({report.converter}, {report.size_bytes / 1e6:.2f} MB, batch {report.batch})\n"
                    f"check passed in {c.runtime} {c.runtime_version}: max |PyTorch - runtime| = {c.max_abs_diff:.2e} "
                    f"<= tolerance {c.tolerance:.2e} ({c.images} images, {c.inputs})\nreport: {rpath}",
                    highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
