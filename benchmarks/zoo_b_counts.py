"""Params and MACs of the zoo-B families next to the papers' tables (the numbers in docs/zoo_b.md).

For every registered variant: parameters, slimkit's MAC count (conv/linear/matmul/attention,
each multiply-accumulate once) at the paper's input size, batch 1, eval mode, random init; then
the same model counted the way the paper counted it, so the comparison is like for like:

- selective scans (MobileMamba, EfficientVMamba): + 9*L*D*N + L*D per scan (the papers' formula);
- fvcore-style norms: + 5 per LayerNorm element, + 2 per eval-BatchNorm element (fvcore's rule);
  MobileMamba counts on a BN-fused model, so only its LayerNorms are added;
- AFFNet: the complex MLP counted as C*C/2*L and the FFT pair as 5*L*floor(ln L)*C (cvnets'
  profiler, from the repository) in place of our exact count of the 8 block-diagonal products.

    PYTHONPATH=src .venv/bin/python benchmarks/zoo_b_counts.py [--filter 'osnet*'] [--json out.json]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re

import torch

FAMILIES = ["osnet", "skipnet", "mobilemamba", "efficientvmamba", "dhvt", "affnet", "tvconv"]


def parse_printed(text: str | None) -> tuple[float, float] | None:
    """'2.2M' -> (2.2e6, 0.05e6): value and half a unit of its last printed digit."""
    if text is None:
        return None
    m = re.fullmatch(r"([0-9.]+)([MG])", text)
    scale = 1e6 if m[2] == "M" else 1e9
    decimals = len(m[1].split(".")[1]) if "." in m[1] else 0
    return float(m[1]) * scale, 0.5 * 10**-decimals * scale


def _extras(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Scan, FFT and complex-MLP work, from forward hooks on the mixers during one forward."""
    from slimkit.zoo._selective_scan import scan_flops
    from slimkit.zoo.affnet import AFFTokenMixer
    from slimkit.zoo.efficientvmamba import ES2D
    from slimkit.zoo.mobilemamba import BiSS2D

    acc = {"scan": 0.0, "aff_paper": 0.0, "aff_counted": 0.0}

    def on_biss2d(mod, args, out):  # (b, c, h, w); two raster scans over all h*w positions
        b, _, h, w = args[0].shape
        acc["scan"] += scan_flops(b, h * w, mod.k * mod.conv.out_channels, mod.d_state)

    def on_es2d(mod, args, out):  # channels last; each of the 4 atrous scans sees a quarter
        b, h, w, _ = args[0].shape
        acc["scan"] += scan_flops(b, -(-h // 2) * -(-w // 2), mod.k * mod.conv.out_channels, mod.d_state)

    def on_aff(mod, args, out):
        b, c, h, w = args[0].shape
        length = h * w
        acc["aff_paper"] += b * (5 * length * int(math.log(length)) * c + c * c // 2 * length)
        acc["aff_counted"] += b * 8 * c * mod.block * h * (w // 2 + 1)

    handlers = {BiSS2D: on_biss2d, ES2D: on_es2d, AFFTokenMixer: on_aff}
    hooks = [m.register_forward_hook(handlers[type(m)]) for m in model.modules() if type(m) in handlers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return acc


def paper_convention(family: str, macs: int, elementwise: dict[str, int], extra: dict[str, float]) -> float:
    ln, bn = elementwise.get("native_layer_norm", 0), elementwise.get("native_batch_norm", 0)
    if family == "skipnet":
        return macs + 2 * bn
    if family == "mobilemamba":
        return macs + extra["scan"] + 5 * ln
    if family == "efficientvmamba":
        return macs + extra["scan"] + 5 * ln + 2 * bn
    if family == "affnet":
        return macs - extra["aff_counted"] + extra["aff_paper"]
    return macs


def measure(name: str) -> dict:
    import timm

    from slimkit.profile import count_macs
    from slimkit.zoo._catalog import zoo_model_names

    family = zoo_model_names()[name]
    kwargs = {"num_classes": 0} if family == "osnet" else {}  # OSNet's table leaves the classifier out
    model = timm.create_model(name, **kwargs).eval()
    if family == "tvconv":
        from slimkit.zoo.tvconv import reparameterize_

        train_params = sum(p.numel() for p in model.parameters())
        reparameterize_(model)
    size = tuple(model.pretrained_cfg["input_size"])
    x = torch.randn(1, *size)
    count = count_macs(model, x)
    extra = _extras(model, x)
    module = __import__(f"slimkit.zoo.{family}", fromlist=["PAPER_TABLE"])
    paper = getattr(module, "PAPER_TABLE", {}).get(name, {})
    row = {
        "name": name, "family": family, "input_size": list(size),
        "params": sum(p.numel() for p in model.parameters()), "macs": count.total,
        "macs_paper_convention": paper_convention(family, count.total, count.elementwise, extra),
        "scan_flops": extra["scan"], "paper": paper,
    }  # fmt: skip
    if family == "tvconv":
        row["params_training_form"] = train_params
    return row


def _fmt(v: float | None, unit: float = 1e6) -> str:
    return "-" if v is None else f"{v / unit:.2f}"


def _compare(ours: float, printed: str | None) -> str:
    """Relative difference to the printed number, and whether it is within 3% or its rounding."""
    ref = parse_printed(printed)
    if ref is None:
        return "-"
    value, half_unit = ref
    ok = abs(ours - value) <= max(0.03 * value, half_unit)
    return f"{100 * (ours - value) / value:+.1f}% {'ok' if ok else 'OFF'}"


_HEADER = (
    "| variant | input | paper params | ours (M) | diff | paper MACs | ours, slimkit (M) "
    "| ours, counted as the paper (M) | diff |\n|---|---|---|---|---|---|---|---|---|"
)


def _row(r: dict) -> str:
    p = r["paper"]
    size = "x".join(map(str, r["input_size"][1:]))
    params_ref = p.get("params_repo") or p.get("params")
    macs_ref = p.get("macs_repo") or p.get("macs")
    cells = [
        r["name"], size, p.get("params", "-"), _fmt(r["params"]), _compare(r["params"], params_ref),
        p.get("macs", "-"), _fmt(r["macs"]), _fmt(r["macs_paper_convention"]),
        _compare(r["macs_paper_convention"], macs_ref),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict]) -> str:
    """One table per family; diffs are against the repository's exact figure where one exists."""
    lines = []
    for family in FAMILIES:
        fam = [r for r in rows if r["family"] == family]
        if fam:
            lines += [f"\n### {family}\n", _HEADER] + [_row(r) for r in fam]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="*")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from slimkit.zoo._catalog import zoo_model_names

    names = [n for n, fam in zoo_model_names().items() if fam in FAMILIES and fnmatch.fnmatch(n, args.filter)]
    rows = [measure(n) for n in names]
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
