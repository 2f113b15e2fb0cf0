"""Count a zoo-B model the way its paper counted it, so the docs and tests compare like with like.

slimkit's own count (:func:`slimkit.profile.count_macs`) is one per multiply-accumulate of
conv/linear/matmul/attention.  The papers' tools differ, per family:

- MobileMamba, EfficientVMamba: fvcore plus ``9*L*D*N + L*D`` per selective scan (the estimate from
  state-spaces/mamba issue 110 that both official repositories register for their scan kernels);
  fvcore counts LayerNorm as 5 and eval BatchNorm as 2 per element.  MobileMamba counts on the
  BN-fused model, so only its LayerNorms are added.
- SkipNet: fvcore-style, so BatchNorm at 2 per element.
- AFFNet: cvnets' profiler (in the repository): conv/linear MACs plus, per token mixer,
  ``C*C/2*L`` for the complex MLP and ``5*L*floor(ln L)*C`` for the FFT pair; slimkit instead
  counts the complex MLP exactly (8 block-diagonal real products) and no FFT, so those are swapped.
- OSNet, DHVT, TVConv: the plain count.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

__all__ = ["parse_printed", "within_paper", "mixer_work", "paper_convention", "count_like_paper"]


def parse_printed(text: str) -> tuple[float, float]:
    """'2.2M' -> (2.2e6, 0.05e6): the value and half a unit of its last printed digit."""
    m = re.fullmatch(r"([0-9.]+)([MG])", text)
    if m is None:
        raise ValueError(f"not a printed count: {text!r}")
    decimals = len(m[1].split(".")[1]) if "." in m[1] else 0
    scale = 1e6 if m[2] == "M" else 1e9
    return float(m[1]) * scale, 0.5 * 10**-decimals * scale


def within_paper(ours: float, printed: str, rel: float = 0.03) -> bool:
    """Within `rel` of the printed number, or within the rounding of the printed digits."""
    value, half_unit = parse_printed(printed)
    return abs(ours - value) <= max(rel * value, half_unit)


def mixer_work(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Selective-scan and AFF work seen by forward hooks during one forward (no grad)."""
    from slimkit.zoo._selective_scan import scan_flops
    from slimkit.zoo.affnet import AFFTokenMixer
    from slimkit.zoo.efficientvmamba import ES2D
    from slimkit.zoo.mobilemamba import BiSS2D

    acc = {"scan": 0.0, "aff_paper": 0.0, "aff_counted": 0.0}

    def on_biss2d(mod: BiSS2D, args: tuple, out: torch.Tensor) -> None:  # two raster scans over h*w
        b, _, h, w = args[0].shape
        acc["scan"] += scan_flops(b, h * w, mod.k * mod.conv.out_channels, mod.d_state)

    def on_es2d(mod: ES2D, args: tuple, out: torch.Tensor) -> None:  # channels last; 4 quarter scans
        b, h, w, _ = args[0].shape
        acc["scan"] += scan_flops(b, -(-h // 2) * -(-w // 2), mod.k * mod.conv.out_channels, mod.d_state)

    def on_aff(mod: AFFTokenMixer, args: tuple, out: torch.Tensor) -> None:
        b, c, h, w = args[0].shape
        length = h * w
        acc["aff_paper"] += b * (5 * length * int(math.log(length)) * c + c * c // 2 * length)
        acc["aff_counted"] += b * 8 * c * mod.block * h * (w // 2 + 1)

    handlers = {BiSS2D: on_biss2d, ES2D: on_es2d, AFFTokenMixer: on_aff}
    hooks = [m.register_forward_hook(handlers[type(m)]) for m in model.modules() if type(m) in handlers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return acc


def paper_convention(family: str, macs: int, elementwise: dict[str, int], work: dict[str, float]) -> float:
    """slimkit's MACs turned into the number the family's paper would have printed."""
    ln, bn = elementwise.get("native_layer_norm", 0), elementwise.get("native_batch_norm", 0)
    if family == "skipnet":
        return macs + 2 * bn
    if family == "mobilemamba":
        return macs + work["scan"] + 5 * ln
    if family == "efficientvmamba":
        return macs + work["scan"] + 5 * ln + 2 * bn
    if family == "affnet":
        return macs - work["aff_counted"] + work["aff_paper"]
    return macs


def count_like_paper(model: nn.Module, family: str, x: torch.Tensor) -> dict[str, float]:
    """{'macs': slimkit's count, 'paper': the paper's convention, 'scan': scan work} for one input."""
    from slimkit.profile import count_macs

    count = count_macs(model, x)
    work = mixer_work(model, x)
    paper = paper_convention(family, count.total, count.elementwise, work)
    return {"macs": count.total, "paper": paper, "scan": work["scan"]}
