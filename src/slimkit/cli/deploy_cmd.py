"""`slimkit deploy patch|cascade ...`: edge techniques (see docs/edge.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import INPUT_SIZE_OPT, MODEL_HELP, console

__all__ = ["register", "deploy_app"]

deploy_app = typer.Typer(help="Edge techniques: patch-based inference, confidence cascades.", no_args_is_help=True)


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
    input_size: Optional[str] = INPUT_SIZE_OPT,
) -> None:
    """Run the first stages patch by patch (MCUNetV2) and report the peak-memory cut and MAC overhead."""
    from slimkit.deploy.edge.patch import PatchConfig, parse_bytes, parse_grid, patch_model
    from slimkit.deploy.edge.patch_report import measure_patch, write_patch_outputs
    from slimkit.models import load_model
    from slimkit.utils.io import atomic_dir, save_resolved_args
    from slimkit.utils.parse import parse_input_size

    target = parse_bytes(peak_memory) if peak_memory else None
    grid = parse_grid(patches) if patches else (None if target is not None and until is None else (4, 4))
    net, info = load_model(model)
    net.eval()
    size = parse_input_size(input_size) or tuple(info.input_size)
    cfg = PatchConfig(grid=grid, until=until, peak_memory_bytes=target, bytes_per_element=bytes_per_element)
    patched, traced, chosen = patch_model(net, size, cfg)
    report = measure_patch(net, patched, traced, chosen)
    with atomic_dir(out) as tmp:
        write_patch_outputs(report, tmp, model)
        save_resolved_args(tmp, "deploy patch", {"model": model, "patches": patches, "until": until,
                                                 "peak_memory": peak_memory, "bytes_per_element": bytes_per_element,
                                                 "input_size": list(size), "chosen": chosen.label})
    _print_patch(report, out)


def _print_patch(r: dict, out: Path) -> None:
    a, m = r["arena_bytes"], r["macs"]
    est, alloc = r["lifetime_estimate_bytes"], r["allocator_peak_bytes"]
    alloc_ratio = (f"{alloc['before']['fp32'] / alloc['after']['fp32']:.2f}x"
                   if alloc["after"]["fp32"] and alloc["before"]["fp32"] else "n/a")
    console().print(
        f"patched up to {r['cut']} ({'x'.join(map(str, r['cut_shape']))}) as {r['grid'][0]}x{r['grid'][1]} patches, "
        f"input {'x'.join(map(str, r['input_size']))}; max |whole - patched| = {r['max_abs_diff']:.2e}\n"
        f"arena (int8): {a['before']['int8'] / 1024:.1f} KB -> {a['after']['int8'] / 1024:.1f} KB "
        f"({a['before']['int8'] / a['after']['int8']:.2f}x); fp32 {a['before']['fp32'] / 1024:.1f} KB -> "
        f"{a['after']['fp32'] / 1024:.1f} KB\n"
        f"profiler lifetime estimate (fp32): {est['before']['fp32'] / 1024:.1f} KB -> {est['after']['fp32'] / 1024:.1f} KB; "
        f"allocator measured peak: {alloc_ratio} lower\n"
        f"MACs: {m['before'] / 1e6:.2f} M -> {m['after'] / 1e6:.2f} M ({100 * m['overhead']:+.1f}% halo overhead)\n"
        f"report: {out / 'report.html'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
