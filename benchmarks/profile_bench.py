"""MAC agreement and wall time: slimkit against fvcore, thop, ptflops and torch's FlopCounterMode.

Reference: torchvision's published `_ops` (GMACs) for its classification models; for timm
transformers (no published figure) the reference is the hand-derivable count, and the
table shows each tool against slimkit. Attention runs fused (eval, no_grad), as users run it.

    .venv/bin/python benchmarks/profile_bench.py [--models resnet18,vit_b_16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

TV_DEFAULT = ["mobilenet_v2", "mobilenet_v3_large", "resnet18", "resnet50", "efficientnet_b0", "shufflenet_v2_x1_0",
              "regnet_y_400mf", "convnext_tiny", "swin_t", "vit_b_16", "vit_b_32", "maxvit_t"]
TIMM_DEFAULT = ["vit_tiny_patch16_224", "deit_small_patch16_224", "pit_ti_224", "mobilevit_xs", "vit_tiny_r_s16_p8_224"]


def slimkit_macs(model, x):
    from slimkit.profile import count_macs

    return count_macs(model, x).total


def fvcore_macs(model, x):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total()  # fvcore counts one "flop" per multiply-accumulate


def thop_macs(model, x):
    import thop

    macs, _ = thop.profile(model, inputs=(x,), verbose=False)
    _strip_thop(model)
    return macs


def _strip_thop(model):
    for m in model.modules():  # thop leaves buffers on every module; remove so later tools see a clean model
        for name in ("total_ops", "total_params"):
            if name in m._buffers:
                del m._buffers[name]


def ptflops_macs(model, x):
    from ptflops import get_model_complexity_info

    macs, _ = get_model_complexity_info(model, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False,
                                        verbose=False, backend="pytorch")
    return macs


def flopcounter_macs(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with mode:
        model(x)
    return mode.get_total_flops() // 2


TOOLS = {"slimkit": slimkit_macs, "fvcore": fvcore_macs, "thop": thop_macs, "ptflops": ptflops_macs,
         "FlopCounterMode": flopcounter_macs}


def measure(model, x):
    row = {}
    for tool, fn in TOOLS.items():
        start = time.perf_counter()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = float(fn(model, x))
        except Exception as exc:  # a tool that crashes is a result too
            value = None
            row[f"{tool}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
        row[tool] = value
        row[f"{tool}_s"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tv", default=",".join(TV_DEFAULT))
    parser.add_argument("--timm", default=",".join(TIMM_DEFAULT))
    parser.add_argument("--json", default="benchmarks/results/profile_bench.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import timm
    from torchvision.models import get_model, get_model_weights

    rows = []
    for name in filter(None, args.tv.split(",")):
        weights = get_model_weights(name).DEFAULT
        crop = weights.transforms().crop_size[0]
        model = get_model(name).eval()
        row = {"model": f"tv:{name}", "reference": weights.meta["_ops"] * 1e9, "reference_kind": "torchvision _ops"}
        row.update(measure(model, torch.randn(1, 3, crop, crop)))
        rows.append(row)
        print(_line(row), flush=True)
    for name in filter(None, args.timm.split(",")):
        model = timm.create_model(name).eval()
        size = model.pretrained_cfg["input_size"][1:]
        row = {"model": f"timm:{name}", "reference": None, "reference_kind": "slimkit (no published figure)"}
        row.update(measure(model, torch.randn(1, 3, *size)))
        row["reference"] = row["slimkit"]
        rows.append(row)
        print(_line(row), flush=True)
    from pathlib import Path

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"threads": 1, "torch": torch.__version__, "rows": rows}, indent=2))
    print()
    print(markdown(rows))


def _ratio(value, reference):
    if value is None:
        return "crash"
    return f"{100 * (value - reference) / reference:+.1f}%"


def _line(row):
    return row["model"] + " " + " ".join(f"{t}={_ratio(row[t], row['reference'])}" for t in TOOLS)


def markdown(rows) -> str:
    head = "| model | reference GMACs | " + " | ".join(TOOLS) + " |"
    sep = "|---|---:|" + "---:|" * len(TOOLS)
    lines = [head, sep]
    for r in rows:
        cells = [f"{_ratio(r[t], r['reference'])} ({r[t + '_s']:.2f} s)" for t in TOOLS]
        lines.append(f"| {r['model']} | {r['reference'] / 1e9:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
