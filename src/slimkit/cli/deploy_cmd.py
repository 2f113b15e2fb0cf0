"""`slimkit deploy patch|cascade|split ...`: edge techniques (see docs/edge.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import DATA_OPT, INPUT_SIZE_OPT, MODEL_HELP, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT, console

__all__ = ["register", "deploy_app"]

deploy_app = typer.Typer(help="Edge techniques: patch-based inference, confidence cascades, split computing.", no_args_is_help=True)


@deploy_app.command("patch")
def patch(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (patch.json, memory_plan.json, report.html)"),
    patches: Optional[str] = typer.Option(None, "--patches", help="Patch grid ROWSxCOLS (default 4x4; searched "
                                          "over 2x2..8x8 with --peak-memory when not given)"),
    until: Optional[str] = typer.Option(None, "--until", help="Patch everything up to the end of this module "
                                        "(e.g. features.6); default: the cut with the smallest arena"),
    peak_memory: Optional[str] = typer.Option(None, "--peak-memory", help="Arena target, e.g. 256KB: choose the "
                                              "cut (and grid) with the fewest extra MACs that fits"),
    bytes_per_element: int = typer.Option(1, "--bytes-per-element", min=1, max=4,
                                          help="Activation storage for --peak-memory: 1 (int8) or 4 (fp32)"),
    stream_input: bool = typer.Option(False, "--stream-input", help="Arena plan: each patch loads only its own "
                                      "input region (camera/flash) instead of keeping the whole image"),
    redistribute: bool = typer.Option(False, "--redistribute", help="Also build a changed model with a cheaper patch "
                                      "stage (kernels > 3 -> 3x3, residual blocks dropped; tail depthwise 3x3 -> 5x5), "
                                      "patch it the same way and save it in DIR/redistributed for fine-tuning"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code to import it"),
) -> None:
    """Run the first stages patch by patch (MCUNetV2) and report the peak-memory cut and MAC overhead."""
    from slimkit.deploy.edge.patch import PatchConfig, parse_bytes, parse_grid, patch_model
    from slimkit.deploy.edge.patch_report import measure_patch, write_patch_outputs
    from slimkit.models import load_model
    from slimkit.utils.io import atomic_dir, save_resolved_args
    from slimkit.utils.parse import parse_input_size

    target = parse_bytes(peak_memory) if peak_memory else None
    grid = parse_grid(patches) if patches else (None if target is not None else (4, 4))
    net, info = load_model(model, trust_code=trust_code)
    net.eval()
    size = parse_input_size(input_size) or tuple(info.input_size)
    cfg = PatchConfig(grid=grid, until=until, peak_memory_bytes=target, bytes_per_element=bytes_per_element,
                      stream_input=stream_input)
    patched, traced, chosen = patch_model(net, size, cfg)
    report = measure_patch(net, patched, traced, chosen, stream_input=stream_input)
    changed = _redistributed(net, traced, chosen, size, stream_input, report) if redistribute else None
    with atomic_dir(out) as tmp:
        write_patch_outputs(report, tmp, model)
        if changed is not None:
            from slimkit.models import save_model_dir

            save_model_dir(changed, info, tmp / "redistributed", extra={"redistribution": report["redistribution"]})
        save_resolved_args(tmp, "deploy patch", {"model": model, "patches": patches, "until": until,
                                                 "peak_memory": peak_memory, "bytes_per_element": bytes_per_element,
                                                 "stream_input": stream_input, "redistribute": redistribute,
                                                 "input_size": list(size), "chosen": chosen.label})
    _print_patch(report, out)


def _redistributed(net, traced, chosen, size, stream_input: bool, report: dict):
    """The redistributed model; its patch figures go into report["redistribution"]."""
    from slimkit.deploy.edge.patch_report import measure_patch
    from slimkit.deploy.edge.redistribute import redistribute_patched, summary

    new, patched, t_new, c_new, changes = redistribute_patched(net, traced, chosen, size, stream_input)
    report["redistribution"] = summary(report, measure_patch(new, patched, t_new, c_new, stream_input=stream_input),
                                       changes)
    return new


def _print_patch(r: dict, out: Path) -> None:
    a, m = r["arena_bytes"], r["macs"]
    est, alloc = r["lifetime_estimate_bytes"], r["allocator_peak_bytes"]
    alloc_ratio = (f"{alloc['before']['fp32'] / alloc['after']['fp32']:.2f}x"
                   if alloc["after"]["fp32"] and alloc["before"]["fp32"] else "n/a")
    console().print(
        f"patched up to {r['cut']} ({'x'.join(map(str, r['cut_shape']))}) as {r['grid'][0]}x{r['grid'][1]} patches, "
        f"input {'x'.join(map(str, r['input_size']))}; max |whole - patched| = {r['max_abs_diff']:.2e} "
        f"(outputs up to {r['output_max_abs']:.2e})\n"
        f"arena (int8): {a['before']['int8'] / 1024:.1f} KB -> {a['after']['int8'] / 1024:.1f} KB "
        f"({a['before']['int8'] / a['after']['int8']:.2f}x); fp32 {a['before']['fp32'] / 1024:.1f} KB -> "
        f"{a['after']['fp32'] / 1024:.1f} KB\n"
        f"profiler lifetime estimate (fp32): {est['before']['fp32'] / 1024:.1f} KB -> {est['after']['fp32'] / 1024:.1f} KB; "
        f"allocator measured peak: {alloc_ratio} lower\n"
        f"MACs: {m['before'] / 1e6:.2f} M -> {m['after'] / 1e6:.2f} M ({100 * m['overhead']:+.1f}% halo overhead)\n"
        f"{_redistribution_line(r.get('redistribution'), out)}report: {out / 'report.html'}", highlight=False,
        soft_wrap=True)


def _redistribution_line(d: dict | None, out: Path) -> str:
    if d is None:
        return ""
    after = d["redistributed"]
    return (f"redistributed (dropped {', '.join(d['dropped_blocks']) or 'no block'}; {len(d['shrunk_kernels'])} head "
            f"kernel(s) -> 3x3; {len(d['grown_kernels'])} tail depthwise 3x3 -> 5x5): whole MACs "
            f"{100 * d['whole_macs_change']:+.1f}%, patched {after['macs']['after'] / 1e6:.2f} M "
            f"({100 * after['macs']['overhead']:+.1f}% halo overhead, was {100 * d['unchanged']['macs']['overhead']:+.1f}%), "
            f"arena int8 {after['arena_bytes']['after']['int8'] / 1024:.1f} KB; max |whole - patched| "
            f"{after['max_abs_diff']:.2e}. The model changed: fine-tune {out / 'redistributed'}\n")


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")


@deploy_app.command("cascade")
def cascade(
    small: str = typer.Argument(..., help="The small model: " + MODEL_HELP),
    big: str = typer.Argument(..., help="The big model (same classes)"),
    out: Path = typer.Option(..., "--out", "-o", help="Cascade directory: small.onnx, big.onnx, policy.json, report"),
    data: str = DATA_OPT,
    max_drop: float = typer.Option(0.5, "--max-drop", help="Allowed top-1 drop below BIG, in points"),
    kind: str = typer.Option("max_softmax", "--confidence", help="max_softmax or margin"),
    holdout: float = typer.Option(0.5, "--holdout", help="Fraction of the validation images kept out of the "
                                  "threshold choice and used to score it (strictly between 0 and 1)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random selection/held-out split"),
    converter: Optional[Path] = typer.Option(None, "--converter", help="A `deploy converter` output trained for "
                                             "SMALL: its autoencoder runs in front of SMALL (CBNet)"),
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads for every timing"),
    repetitions: int = typer.Option(100, "--repetitions", min=5, help="Timed calls per model (interleaved)"),
    timed_images: int = typer.Option(300, "--timed-images", min=1, help="Images timed through the cascade"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code to import it"),
) -> None:
    """Small model first, big model for the unsure inputs: threshold chosen for the lowest measured latency."""
    from slimkit.data import load_data
    from slimkit.deploy.edge.cascade import CascadeConfig
    from slimkit.deploy.edge.cascade_build import build_cascade
    from slimkit.deploy.edge.cascade_report import write_cascade_report
    from slimkit.models import load_model
    from slimkit.utils.io import atomic_dir, save_resolved_args
    from slimkit.utils.parse import parse_input_size

    config = CascadeConfig(kind=kind, max_drop=max_drop, holdout=holdout, seed=seed)
    s_net, s_info = load_model(small, trust_code=trust_code)
    b_net, _ = load_model(big, trust_code=trust_code)
    size = parse_input_size(input_size) or tuple(s_info.input_size)
    if converter is not None:
        from slimkit.deploy.edge.converter import load_converted

        s_net = load_converted(converter, s_net, size)
    bundle = load_data(data, input_size=size, val_samples=val_samples)
    x, y = (t.numpy() for t in bundle.val.tensors())
    with atomic_dir(out) as tmp:
        report = build_cascade(s_net.eval(), b_net.eval(), size, x.astype("float32"), y, bundle.num_classes, tmp,
                               config, threads=threads, repetitions=repetitions, timed_images=timed_images)
        write_cascade_report(report, tmp, small, big, data)
        save_resolved_args(tmp, "deploy cascade", {"small": small, "big": big, "data": data, **config.to_dict(),
                                                   "converter": None if converter is None else str(converter),
                                                   "threads": threads, "input_size": list(size)})
    _print_cascade(report, out, threads)


def _print_cascade(report: dict, out: Path, threads: int) -> None:
    c, h, m = report["choice"], report["heldout"], report["measured"]
    line = lambda r, n: (f"top-1 {r['accuracy']:.2f}% (BIG {r['big_accuracy']:.2f}%, SMALL {r['small_accuracy']:.2f}%), "  # noqa: E731
                         f"{100 * r['fraction_sent']:.1f}% sent on, predicted {r['mean_latency_ms']:.3f} ms ({n} images)")
    console().print(
        f"threshold {report['policy']['threshold']} ({report['config']['kind']}) chosen on "
        f"{report['selection_images']} images: {line(c, report['selection_images'])}\n"
        f"held out: {line(h, h['images'])}, {-h['drop']:+.2f} points vs BIG\n"
        f"measured per held-out image ({m['cascade_ms']['n']} images, ONNX Runtime, {threads} thread(s)): cascade mean "
        f"{m['cascade_ms']['mean']:.3f} ms, p90 {m['cascade_ms']['p90']:.3f} ms; BIG alone mean "
        f"{m['big_alone_ms']['mean']:.3f} ms ({m['big_alone_ms']['mean'] / m['cascade_ms']['mean']:.2f}x)\n"
        f"cascade: {out}", highlight=False, soft_wrap=True)


@deploy_app.command("converter")
def converter(
    small: str = typer.Argument(..., help="The cascade's small model: " + MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory: converter + SMALL, usable as SMALL of "
                             "`deploy cascade`"),
    data: str = DATA_OPT,
    width: int = typer.Option(16, "--width", min=1, help="Converter channels (2x at its bottleneck)"),
    epochs: int = typer.Option(2, "--epochs", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    ce_weight: float = typer.Option(0.0, "--ce-weight", help="Add this x SMALL's cross-entropy on the converted "
                                    "image to CBNet's reconstruction loss (0: CBNet's loss alone)"),
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    input_size: Optional[str] = INPUT_SIZE_OPT,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out"),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code to import it"),
) -> None:
    """Train CBNet's converting autoencoder in front of SMALL (frozen): hard images toward easy ones of their class."""
    from slimkit.data import load_data
    from slimkit.deploy.edge.converter import ConverterConfig, easy_images, train_converter
    from slimkit.engine.outputs import prepare_out_dir
    from slimkit.models import load_model
    from slimkit.utils.io import save_resolved_args
    from slimkit.utils.parse import parse_input_size

    config = ConverterConfig(width=width, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, ce_weight=ce_weight)
    prepare_out_dir(out, resume=resume, overwrite=False, write=False)
    net, info = load_model(small, trust_code=trust_code)
    size = parse_input_size(input_size) or tuple(info.input_size)
    bundle = load_data(data, input_size=size, train_samples=train_samples, val_samples=val_samples, seed=seed)
    easy = easy_images(net, *bundle.train.tensors(), bundle.num_classes)  # fails before anything is written
    prepare_out_dir(out, resume=resume, overwrite=False, write=True)
    save_resolved_args(out, "deploy converter", {"small": small, "data": data, **config.to_dict(),
                                                 "input_size": list(size)})
    result = train_converter(net, bundle, config, out=out, info=info, resume=resume, easy=easy)
    console().print(f"converter + SMALL: val top-1 {100 * result.metrics['accuracy']:.2f}% after "
                    f"{result.epochs_completed} epoch(s); model directory: {out}", highlight=False)


@deploy_app.command("split")
def split(
    model: str = typer.Argument(..., help=MODEL_HELP),
    at: str = typer.Option(..., "--at", help="Cut after this module (e.g. 3 or features.2); the device runs up to it"),
    bottleneck: int = typer.Option(8, "--bottleneck", min=1, help="Channels of the coded bottleneck"),
    hidden: Optional[int] = typer.Option(None, "--hidden", min=1, help="Encoder/decoder width (default: the cut's "
                                         "channels); the encoder runs on the device"),
    lam: str = typer.Option("0.1", "--lambda", help="Rate weight(s): loss = KD + lambda x kilobits per image; "
                            "several (0.01,0.1,1) train one split each and plot rate against accuracy"),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: lambda-L/{device,server}, report.json/html"),
    data: str = DATA_OPT,
    epochs: int = typer.Option(3, "--epochs", min=1),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop training after N steps"),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads for the device timing"),
    input_size: Optional[str] = INPUT_SIZE_OPT,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (finished lambdas "
                                "are kept, the one in progress restarts from its last completed epoch)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous split run in --out"),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model directory built from user code to import it"),
) -> None:
    """Split computing (Entropic Student): a KD-trained, entropy-coded bottleneck between device and server."""
    from slimkit.data import load_data
    from slimkit.deploy.edge.split import SplitConfig, build_split
    from slimkit.deploy.edge.split_report import deploy_split
    from slimkit.deploy.edge.split_run import close_run, open_run, parse_lambdas
    from slimkit.engine.config import TrainConfig
    from slimkit.models import load_model
    from slimkit.utils.io import save_resolved_args
    from slimkit.utils.parse import parse_input_size

    lambdas = parse_lambdas(lam)
    net, info = load_model(model, trust_code=trust_code)
    size = parse_input_size(input_size) or tuple(info.input_size)
    cfg = SplitConfig(at=at, channels=bottleneck, hidden=hidden)
    build_split(net.eval(), size, cfg)  # a bad --at fails before data loading and training
    settings = {"model": model, "at": at, "bottleneck": bottleneck, "hidden": hidden, "lambda": lambdas,
                "data": data, "epochs": epochs, "max_steps": max_steps, "lr": lr, "batch_size": batch_size,
                "train_samples": train_samples, "val_samples": val_samples, "input_size": list(size)}
    open_run(out, settings, resume=resume, overwrite=overwrite, write=False)
    bundle = load_data(data, input_size=size, train_samples=train_samples, val_samples=val_samples,
                       mean=info.mean, std=info.std)
    config = TrainConfig(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size)
    open_run(out, settings, resume=resume, overwrite=overwrite)
    summary = deploy_split(net, bundle, cfg, lambdas, config, out, info=info, threads=threads)
    save_resolved_args(out, "deploy split", settings)
    close_run(out)
    _print_split(summary, out)


def _print_split(r: dict, out: Path) -> None:
    m, lat = r["points"][0]["macs"], r["points"][0]["device_latency_ms"]
    naive = r["baselines"][-1]
    lines = [f"split after {r['at']} ({'x'.join(map(str, r['cut_shape']))} -> {'x'.join(map(str, r['code_shape']))} "
             f"coded), original top-1 {r['original_top1']:.2f}% ({r['points'][0]['split']['images']} images)"]
    for p in r["points"]:
        s, c = p["split"], p["comparison"]
        lines.append(f"lambda {p['lambda']:g}: {s['bytes_mean']:.1f} B/image (range coder, decoded exactly: "
                     f"{s['decoded_exact']}), top-1 {s['top1']:.2f}%; cheapest input codec at least as accurate: "
                     f"{c['best_input_codec']} {c['codec_bytes']:.1f} B, top-1 {c['codec_top1']:.2f}% -> "
                     f"{c['bytes_ratio']:.2f}x, {c['accuracy_gap_points']:+.2f} points "
                     f"(aim 2x at equal accuracy: {'met' if c['aim_met'] else 'NOT met'})")
    lines += [f"{naive['codec']}: {naive['bytes_mean']:.1f} B, top-1 {naive['top1']:.2f}%",
              f"device part: {m['device'] / 1e6:.3f} M MACs ({100 * m['device_fraction']:.1f}% of the model), "
              f"{lat['device_model']['median']:.3f} ms + coder {lat['range_encode']['median']:.3f} ms (ONNX Runtime, "
              f"{r['threads']} thread(s))", f"split: {out} (report.html: rate against accuracy)"]
    console().print("\n".join(lines), highlight=False, soft_wrap=True)
