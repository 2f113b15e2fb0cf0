"""`slimkit quantize MODEL --calib-data digits --out DIR [--qat | --codebook]`: int8 that is verified, accurate
enough, and not slower (static PTQ, the default), quantization-aware training, or weight codebooks.
The command parses; the quantize verb (slimkit.compress.quantize.api) does the work."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import INPUT_SIZE_OPT, MODEL_HELP, console, save_resolved_args

__all__ = ["register"]

SWITCH = "auto|on|off"


def _config(config_file, method, per_tensor, symmetric, calib_samples, max_drop, no_max_drop, equalize,
            bias_correction, no_speed_guard, exclude, relu6="skip", target_cpu="auto", weight_format="auto"):
    from slimkit.compress.quantize.config import PTQConfig, load_config
    from slimkit.errors import BadInputError

    if config_file is not None:
        return load_config(config_file)  # ptq, qat or codebook
    try:
        return PTQConfig(method=method, per_channel=not per_tensor, symmetric_activations=symmetric,
                         calib_samples=calib_samples, max_drop=None if no_max_drop else max_drop, equalize=equalize,
                         bias_correction=bias_correction, relu6=relu6, speed_guard=not no_speed_guard,
                         exclude=list(exclude or []), target_cpu=target_cpu, weight_format=weight_format)
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
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware training (fake-quant), exported as int8 QDQ ONNX"),
    codebook: bool = typer.Option(False, "--codebook", help="Weight-only codebooks with learnable centroids (JLCM)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help="--qat / --codebook: training epochs (2 / 0)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="--qat / --codebook: learning rate (default 1e-3)"),
    distill_alpha: Optional[float] = typer.Option(None, "--distill-alpha", help="--qat: weight of KD from the float model"),
    bits: Optional[int] = typer.Option(None, "--bits", help="--codebook: 2**bits centroids per codebook (default 4)"),
    groups: Optional[int] = typer.Option(None, "--groups", help="--codebook: channel groups with their own codebook"),
    train_samples: Optional[int] = typer.Option(None, "--train-samples", min=1,
                                                help="--qat / --codebook: training images (default: all)"),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code"),
    target_cpu: str = typer.Option("auto", "--target-cpu", help="CPU the int8 model ships to: auto (this machine) | "
                                   "x86-vnni | x86-avx2 (7-bit weights: no int16 saturation) | arm64"),
    weight_format: str = typer.Option("auto", "--weight-format", help="int8 weights: auto (s7 where the target "
                                      "saturates) | s8 | s7"),
) -> None:
    """Static int8 (QDQ, ONNX Runtime): verified export, accuracy limit, speed guard, report."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from slimkit.compress.quantize.calib import load_quant_data
    from slimkit.compress.quantize.api import quantize as quantize_verb
    from slimkit.compress.quantize.speed_guard import OrtLatency
    from slimkit.models import load_model
    from slimkit.utils.parse import parse_input_size

    import torch

    torch.set_num_threads(max(1, threads))
    trained = _trained_config(qat, codebook, epochs, lr, distill_alpha, bits, groups, target_cpu, weight_format)
    cfg = trained or _config(config_file, method, per_tensor, symmetric, calib_samples, max_drop, no_max_drop,
                             equalize, bias_correction, no_speed_guard, exclude, relu6, target_cpu, weight_format)
    net, info = load_model(model, trust_code=trust_code)
    size = parse_input_size(input_size) or tuple(info.input_size)
    norm_mean, norm_std = _floats(mean, "--mean") or info.mean, _floats(std, "--std") or info.std
    if cfg.kind != "ptq":
        args = {"model": model, "out": str(out), "calib_data": calib_data, "val_samples": val_samples,
                "train_samples": train_samples, "input_size": list(size), "seed": seed, "mean": list(norm_mean),
                "std": list(norm_std), "config": cfg.model_dump()}
        return _quantize_trained(net, info, cfg, calib_data, size, norm_mean, norm_std, train_samples, val_samples,
                                 seed, out, args)
    data = load_quant_data(calib_data, size, calib_samples=cfg.calib_samples, val_samples=val_samples,
                           mean=norm_mean, std=norm_std, seed=seed)
    screen = OrtLatency(size, threads=threads, repetitions=max(20, latency_reps // 3), rounds=5, min_time_s=0.3)
    final = OrtLatency(size, threads=threads, repetitions=latency_reps, rounds=10, min_time_s=2.0)
    logging.getLogger("slimkit").addHandler(logging.NullHandler())  # warnings are printed below, once
    con = console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con, transient=True) as bar:
        task = bar.add_task("quantizing", total=None)
        report = quantize_verb(net, cfg, data=data, input_size=size, out_dir=out, tune=tune, latency=screen,
                               final_latency=final, progress=lambda msg: bar.update(task, description=msg),
                               extra_report={"model": info.to_dict()}).report
    save_resolved_args(out, "quantize", {"model": model, "out": str(out), "calib_data": calib_data,
                                         "val_samples": val_samples, "input_size": list(size), "tune": tune,
                                         "threads": threads, "latency_reps": latency_reps, "seed": seed,
                                         "mean": list(norm_mean), "std": list(norm_std),
                                         "config": cfg.model_dump()})
    _print(con, out, report)


def _trained_config(qat: bool, codebook: bool, epochs, lr, distill_alpha, bits, groups, target_cpu="auto",
                    weight_format="auto"):
    """The QATConfig or CodebookConfig of --qat / --codebook and their options (None for PTQ)."""
    from slimkit.compress.quantize.config import CodebookConfig, QATConfig
    from slimkit.errors import BadInputError

    options = {"epochs": epochs, "lr": lr, "distill_alpha": distill_alpha, "bits": bits, "groups": groups}
    if (qat or codebook) and (target_cpu != "auto" or weight_format != "auto"):  # "auto": the default, not given
        options.update(target_cpu=target_cpu, weight_format=weight_format)
    if qat and codebook:
        raise BadInputError("give --qat or --codebook, not both")
    flag, cls, allowed = (("--qat", QATConfig, {"epochs", "lr", "distill_alpha", "target_cpu", "weight_format"}) if qat else
                          ("--codebook", CodebookConfig, {"epochs", "lr", "bits", "groups"}) if codebook else
                          ("static int8", None, set()))
    wrong = [k for k, v in options.items() if v is not None and k not in allowed]
    if wrong:
        raise BadInputError(f"--{wrong[0].replace('_', '-')} does not apply to {flag}")
    if cls is None:
        return None
    try:
        return cls(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ("?",), "msg": str(exc)}
        raise BadInputError(f"invalid {flag} option {first['loc'][0]}: {first['msg']}") from exc


def _quantize_trained(net, info, cfg, data_spec, size, mean, std, train_samples, val_samples, seed, out, args) -> None:
    """QAT or codebook compression through the quantize verb; writes OUT and prints what it measured."""
    from slimkit.compress.quantize.api import quantize as quantize_verb
    from slimkit.data import load_data

    data = load_data(data_spec, size, train_samples=train_samples, val_samples=val_samples, seed=seed,
                     mean=tuple(mean), std=tuple(std))
    con = console()
    with con.status(f"{cfg.kind}: training and exporting"):
        result = quantize_verb(net, cfg, data=data, input_size=size, out_dir=out, seed=seed)
    save_resolved_args(out, "quantize", args)
    r, files = result.report, ", ".join(p.name for p in result.files.values())
    con.print(f"wrote {out}/{files}, report.json", highlight=False, soft_wrap=True)
    if r.get("accuracy"):
        a = r["accuracy"]
        extra = f", int8 ONNX Runtime {a['int8_onnxruntime']:.2f}%" if "int8_onnxruntime" in a else ""
        con.print(f"accuracy (top-1, {a['val_samples']} images): fp32 {a['fp32']:.2f}%, {cfg.kind} (PyTorch) "
                  f"{a['quantized']:.2f}%{extra}", highlight=False, soft_wrap=True)
    sizes = "; ".join(f"{k} {v / 1e3:.1f} KB" for k, v in r["size_bytes"].items())
    con.print(f"size: {sizes}", highlight=False, soft_wrap=True)
    _print_int8_format(con, r)
    for w in r.get("warnings", []):
        con.print(f"[bold red]{w}[/bold red]", soft_wrap=True)


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
    _print_int8_format(con, r)
    for w in r["warnings"]:
        con.print(f"[bold red]{w}[/bold red]", soft_wrap=True)


def _print_int8_format(con, r: dict) -> None:
    fmt, check = r.get("int8_format"), r.get("int8_check") or (r.get("export") or {}).get("int8_check")
    if fmt:
        con.print(f"int8 weights: {fmt['weights']} (target {fmt['target_cpu']}: {fmt['why']})", highlight=False,
                  soft_wrap=True)
    if check and check["passed"]:
        con.print(f"exact int8 check: {check['ops_checked']} int8 op(s) of ONNX Runtime on {check['int8_path']} "
                  f"match int32 arithmetic (worst {check['max_steps']:.2f} step, {check['images']} images)",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
