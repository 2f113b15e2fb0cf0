"""`slimkit export MODEL --to RUNTIMES --out DIR [--int8 QUANT_DIR]`: the multi-runtime half of `export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slimkit.cli.common import console, save_resolved_args
from slimkit.errors import BadInputError

__all__ = ["export_to_runtimes", "int8_source", "check_images_for"]

CHECK_IMAGES = 4


def check_images_for(data_spec: str, size, mean, std, seed: int = 0) -> np.ndarray:
    """A few real images (the val split of `data_spec`) at the model's size and normalisation."""
    from slimkit.data import load_data

    bundle = load_data(data_spec, tuple(size), train_samples=CHECK_IMAGES, val_samples=CHECK_IMAGES, seed=seed,
                       mean=tuple(mean), std=tuple(std))
    return bundle.val.tensors()[0].numpy()


def int8_source(quant_dir: Path, net, size, val_samples: int | None = 500):
    """The QDQ ONNX of a `slimkit quantize` run, and the very calibration/val images it used."""
    from slimkit.compress.quantize.calib import load_quant_data
    from slimkit.deploy.multi import Int8Source

    qdq, args_file = quant_dir / "model.int8.onnx", quant_dir / "args.json"
    if not qdq.is_file() or not args_file.is_file():
        raise BadInputError(f"--int8 {quant_dir}: not a `slimkit quantize` output (needs model.int8.onnx and args.json)")
    args = json.loads(args_file.read_text()).get("args", {})
    if list(args.get("input_size", size)) != list(size):
        raise BadInputError(f"--int8 {quant_dir} was quantized at input {args.get('input_size')}, export uses {list(size)}")
    data = load_quant_data(args.get("calib_data", "digits"), size, calib_samples=args["config"]["calib_samples"],
                           val_samples=min(val_samples or 10**9, args.get("val_samples", 1000)), mean=args["mean"],
                           std=args["std"], seed=args.get("seed", 0))
    _same_model(quant_dir / "model.onnx", net, data.calib_x[:2])
    return Int8Source(qdq, data.calib_x, data.val_x, data.val_y, origin=str(quant_dir)), data.calib_x[:CHECK_IMAGES]


def _same_model(fp32_onnx: Path, net, x: np.ndarray) -> None:
    """The quantize run must come from this model: its fp32 ONNX must agree with it."""
    from slimkit.deploy.artifact import torch_reference
    from slimkit.deploy.onnx_export import ort_session

    session = ort_session(fp32_onnx, threads=1)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    ref = torch_reference(net.eval())(x)[0]
    if got.shape != ref.shape or np.max(np.abs(got - ref)) > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
        raise BadInputError(f"--int8 {fp32_onnx.parent} was made from a different model (its fp32 ONNX disagrees with it)")


def export_to_runtimes(model: str, out: Path, to: str, *, input_size, int8_dir, check_data, threads, latency,
                       repetitions, atol: float = 1e-4) -> dict:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from slimkit.deploy.multi import export_multi
    from slimkit.deploy.runtime import parse_runtimes
    from slimkit.models import load_model
    from slimkit.utils.parse import parse_input_size

    names = parse_runtimes(to)
    everything = to.strip().lower() == "all"
    net, info = load_model(model)
    size = parse_input_size(input_size) or tuple(info.input_size)
    int8, check_x = (None, None)
    if int8_dir is not None:
        int8, check_x = int8_source(Path(int8_dir), net, size)
    if check_x is None:
        check_x = check_images_for(check_data, size, info.mean, info.std)
    con = console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=con,
                  transient=True) as bar:
        task = bar.add_task("exporting", total=None)
        data = export_multi(net, size, out, names, check_x=check_x, int8=int8, threads=threads, latency=latency,
                            repetitions=repetitions, atol=atol, skip_unavailable=everything,
                            say=lambda msg: bar.update(task, description=msg),
                            extra={"model": info.to_dict(), "check_data": check_data if int8 is None else "calibration"})
    save_resolved_args(out, "export", {"model": model, "out": str(out), "to": to, "input_size": list(size),
                                       "int8": str(int8_dir) if int8_dir else None, "check_data": check_data,
                                       "threads": threads, "latency": latency, "repetitions": repetitions,
                                       "atol": atol})
    _print(con, out, data)
    return data


def _print(con, out: Path, data: dict) -> None:
    from rich.table import Table

    lat = data.get("latency") or {}
    title = f"{out}/deploy.json" + (f"  (latency: {lat['threads']} thread(s), batch 1, median of "
                                    f"{lat['repetitions']}, interleaved, {lat['cpu']})" if lat else "")
    table = Table(title=title)
    for col in ("runtime", "precision", "file", "size", "check", "latency ms", "top-1"):
        table.add_column(col)
    for entry in data["artifacts"].values():
        c = entry["check"]
        ref = c.get("reference", "pytorch")
        check = f"passed: {c['max_abs_diff']:.2e} <= {c['tolerance']:.2e} vs {ref}"
        acc = entry.get("accuracy")
        table.add_row(entry["runtime"], entry["precision"], entry["file"], f"{entry['size_bytes'] / 1e6:.2f} MB", check,
                      f"{entry['latency_ms']['median']:.3f}" if "latency_ms" in entry else "-",
                      f"{acc['top1']:.2f}% ({acc['change']:+.2f})" if acc else "-")
    con.print(table)
    if lat:
        con.print(f"PyTorch eager fp32: {lat['pytorch_fp32_ms']['median']:.3f} ms; fastest: "
                  + ", ".join(f"{p} {rt}" for p, rt in lat["fastest"].items()), highlight=False, soft_wrap=True)
    for why in data["unavailable"].values():
        con.print(f"[bold yellow]not exported: {why}[/bold yellow]", soft_wrap=True)
