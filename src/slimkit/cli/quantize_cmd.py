"""`slimkit quantize MODEL --calib-data digits --out DIR`: int8 that is verified, accurate enough, and not slower."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import INPUT_SIZE_OPT, MODEL_HELP, console, save_resolved_args

__all__ = ["register"]

SWITCH = "auto|on|off"


def _config(config_file, method, per_tensor, symmetric, calib_samples, max_drop, no_max_drop, equalize,
            bias_correction, no_speed_guard, exclude, relu6="skip"):
    from slimkit.compress.quantize.config import PTQConfig, load_config
    from slimkit.errors import BadInputError

    if config_file is not None:
        cfg = load_config(config_file)
        if not isinstance(cfg, PTQConfig):
            raise BadInputError(f"{config_file} is a {cfg.kind} config; quantize needs kind: ptq")
        return cfg
    try:
        return PTQConfig(method=method, per_channel=not per_tensor, symmetric_activations=symmetric,
                         calib_samples=calib_samples, max_drop=None if no_max_drop else max_drop, equalize=equalize,
                         bias_correction=bias_correction, relu6=relu6, speed_guard=not no_speed_guard,
                         exclude=list(exclude or []))
    except ValueError as exc:  # pydantic's ValidationError
        raise BadInputError(f"invalid quantize option: {str(exc).splitlines()[-2].strip() if len(str(exc).splitlines()) > 1 else exc}") from exc


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    from slimkit.errors import BadInputError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise BadInputError(f"{name} needs comma-separated numbers, got {text!r}") from exc
    if name == "--std" and any(v <= 0 for v in values):
        raise BadInputError(f"{name} values must be positive, got {text!r}")
    return values


def quantize(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (model.onnx, model.int8.onnx, report.json)"),
    calib_data: str = typer.Option("digits", "--calib-data", help="Data source for calibration and accuracy"),
    calib_samples: int = typer.Option(256, "--calib-samples", min=1, help="Calibration images (from the train split)"),
    val_samples: int = typer.Option(1000, "--val-samples", min=1, help="Labelled images for accuracy (val split)"),
    max_drop: float = typer.Option(1.0, "--max-drop", min=0.0, help="Allowed top-1 drop in points; sensitive layers stay float"),
    no_max_drop: bool = typer.Option(False, "--no-max-drop", help="No accuracy-driven float fallback"),
    method: str = typer.Option("minmax", "--method", help="Calibration: minmax | percentile | entropy"),
    per_tensor: bool = typer.Option(False, "--per-tensor", help="Per-tensor weight scales (default: per channel)"),
    symmetric: bool = typer.Option(False, "--symmetric", help="Symmetric int8 activations (default: asymmetric uint8)"),
    equalize: str = typer.Option("auto", "--equalize", help=f"Cross-layer equalization {SWITCH} (auto: depthwise models)"),
    bias_correction: str = typer.Option("auto", "--bias-correction", help=f"Bias correction {SWITCH}"),
    relu6: str = typer.Option("skip", "--relu6", help="Equalization across ReLU6: skip (keeps ORT's fused Clip) | clip (exact) | relu"),
    no_speed_guard: bool = typer.Option(False, "--no-speed-guard", help="Skip the search for slow int8 parts"),
    tune: bool = typer.Option(False, "--tune", help="Quantune: surrogate search over method/granularity/scheme/float layers"),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="ONNX node name to keep in float (repeatable)"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads for timing"),
    latency_reps: int = typer.Option(100, "--latency-reps", min=10, help="Timed calls per model in the final fp32/int8 run"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A ptq config (.json/.yaml) instead of the options"),
    mean: Optional[str] = typer.Option(None, "--mean", help="Input normalisation mean, e.g. 0.5 or 0.485,0.456,0.406 (default: the model's)"),
    std: Optional[str] = typer.Option(None, "--std", help="Input normalisation std (default: the model's)"),
    seed: int = typer.Option(0, "--seed", help="Data subset seed"),
) -> None:
    """Static int8 (QDQ, ONNX Runtime): verified export, accuracy limit, speed guard, report."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from slimkit.compress.quantize.calib import load_quant_data
    from slimkit.compress.quantize.pipeline import quantize_ptq
    from slimkit.compress.quantize.speed_guard import OrtLatency
    from slimkit.models import load_model
    from slimkit.utils.parse import parse_input_size

    import torch

    torch.set_num_threads(max(1, threads))
    cfg = _config(config_file, method, per_tensor, symmetric, calib_samples, max_drop, no_max_drop, equalize,
                  bias_correction, no_speed_guard, exclude, relu6)
    net, info = load_model(model)
    size = parse_input_size(input_size) or tuple(info.input_size)
    norm_mean, norm_std = _floats(mean, "--mean") or info.mean, _floats(std, "--std") or info.std
    data = load_quant_data(calib_data, size, calib_samples=cfg.calib_samples, val_samples=val_samples,
                           mean=norm_mean, std=norm_std, seed=seed)
    screen = OrtLatency(size, threads=threads, repetitions=max(20, latency_reps // 3), rounds=5, min_time_s=0.3)
    final = OrtLatency(size, threads=threads, repetitions=latency_reps, rounds=10, min_time_s=2.0)
    logging.getLogger("slimkit").addHandler(logging.NullHandler())  # warnings are printed below, once
    con = console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con, transient=True) as bar:
        task = bar.add_task("quantizing", total=None)
        report = quantize_ptq(net, size, data, cfg, out, tune=tune, latency=screen, final_latency=final,
                              progress=lambda msg: bar.update(task, description=msg),
                              extra_report={"model": info.to_dict()})
    save_resolved_args(out, "quantize", {"model": model, "out": str(out), "calib_data": calib_data,
                                         "val_samples": val_samples, "input_size": list(size), "tune": tune,
                                         "threads": threads, "latency_reps": latency_reps, "seed": seed,
                                         "mean": list(norm_mean), "std": list(norm_std),
                                         "config": cfg.model_dump()})
    _print(con, out, report)


def _print(con, out: Path, r: dict) -> None:
    lat, size = r["latency_ms"], r["size_bytes"]
    t = r["latency"]
    con.print(f"wrote {out}/model.onnx, model.int8.onnx, report.json", highlight=False, soft_wrap=True)
    con.print(f"latency (ORT, {t['conditions'].get('threads', '?')} thread, batch 1, median of {t['int8']['repetitions']}, "
              f"interleaved): fp32 {lat['fp32']:.3f} ms (iqr {t['fp32']['iqr']:.3f}), int8 {lat['int8']:.3f} ms "
              f"(iqr {t['int8']['iqr']:.3f}) -> {lat['speedup']:.2f}x ({r['speed_guard']['verdict']})",
              highlight=False, soft_wrap=True)
    if r["accuracy"]:
        a = r["accuracy"]
        con.print(f"accuracy (top-1, {a['val_samples']} images): fp32 {a['fp32']:.2f}%, int8 {a['int8']:.2f}% "
                  f"(drop {a['drop']:.2f}, limit {a['max_drop']})", highlight=False, soft_wrap=True)
    con.print(f"size: fp32 {size['fp32'] / 1e6:.2f} MB, int8 {size['int8'] / 1e6:.2f} MB; "
              f"{len(r['float_nodes'])} node(s) kept float", highlight=False, soft_wrap=True)
    for w in r["warnings"]:
        con.print(f"[bold red]{w}[/bold red]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
