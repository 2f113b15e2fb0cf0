"""`slimkit profile MODEL`: exact cost of a model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import INPUT_SIZE_OPT, MODEL_HELP, console


def profile_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size of the profiled input"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure to this JSON file"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Measure latency (PyTorch and ONNX Runtime)"),
    onnxruntime: bool = typer.Option(True, "--onnxruntime/--no-onnxruntime", help="Include ONNX Runtime latency"),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="Also time deploy runtimes, interleaved: "
                                          "openvino,tflite,executorch or all (each on a checked artifact)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for both runtimes (default: torch's)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Classifier size"),
    pretrained: bool = typer.Option(False, "--pretrained", help="Load pretrained weights (must be available locally)"),
    layers: int = typer.Option(20, "--layers", help="Layer rows to print (0: all, -1: none)"),
    repetitions: int = typer.Option(50, "--repetitions", min=3, help="Timed calls per runtime (at least)"),
) -> None:
    """Exact MACs, params, size, peak activation memory and measured latency of MODEL."""
    from slimkit.profile import profile
    from slimkit.profile.format import render_profile
    from slimkit.utils.io import atomic_write_json
    from slimkit.utils.parse import parse_input_size

    size = parse_input_size(input_size)
    runtimes = _runtimes(runtime, batch)
    result = profile(
        model, size, latency=latency, batch=batch, onnxruntime=onnxruntime or "onnx" in runtimes, threads=threads,
        num_classes=num_classes, pretrained=pretrained, repetitions=repetitions, runtimes=runtimes,
    )
    render_profile(result, console(), layers=layers)
    if json_path is not None:
        data = result.to_dict()
        data["args"] = {"model": model, "input_size": list(result.input_size), "batch": batch, "latency": latency,
                        "onnxruntime": onnxruntime, "threads": threads, "num_classes": num_classes,
                        "pretrained": pretrained, "repetitions": repetitions, "runtime": runtime}
        atomic_write_json(json_path, data)
        console().print(f"wrote {json_path}")


def _runtimes(text: str | None, batch: int) -> list[str]:
    """The deploy runtimes to time; `all` means every one installed here (the others are named as unavailable)."""
    from slimkit.deploy.runtime import parse_runtimes
    from slimkit.errors import BadInputError

    if not text:
        return []
    names = parse_runtimes(text)
    fixed = [n for n in names if n in ("tflite", "executorch")]
    if fixed and batch != 1:
        raise BadInputError(f"{', '.join(fixed)}: artifacts have a fixed batch of 1; profile them with --batch 1")
    return names


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_command)
