"""Paper vs ours: parameters and MACs of the zoo's part-A families at the papers' input sizes.

Usage:  PYTHONPATH=src python benchmarks/zoo_a_counts.py [--fvcore]

Counts are exact (no timing): parameters are `sum(p.numel())` (buffers excluded); MACs come from
slimkit.profile.count_macs (conv/linear/matmul/attention multiply-accumulates, each once) on one
image at the input size in the model's pretrained_cfg. With --fvcore, fvcore's FlopCountAnalysis
(which also counts norms) runs too, for tables that were measured with it. Prints markdown.
"""

from __future__ import annotations

import argparse
import logging

import timm
import torch

import slimkit.zoo  # noqa: F401
from slimkit.profile import count_macs

# name -> (paper params, paper MACs, source note)
PAPER = {
    "emov2_1m": (1.4e6, 285e6), "emov2_2m": (2.3e6, 487e6), "emov2_5m": (5.1e6, 1035e6),
    "simplenet_cifar": (5.48e6, 652e6),
    "simplenetv1_small_m1_05": (1.51e6, 0.34e9), "simplenetv1_small_m2_05": (1.51e6, 0.43e9),
    "simplenetv1_small_m1_075": (3.29e6, 0.76e9), "simplenetv1_small_m2_075": (3.29e6, 0.96e9),
    "simplenetv1_5m_m1": (5.75e6, 1.35e9), "simplenetv1_5m_m2": (5.75e6, 1.69e9),
    "simplenetv1_9m_m1": (9.51e6, 2.78e9), "simplenetv1_9m_m2": (9.51e6, 3.56e9),
    "cct_2_3x2_32": (0.284e6, 0.033e9), "cct_4_3x2_32": (0.482e6, 0.046e9), "cct_6_3x1_32": (3.168e6, 0.813e9),
    "cct_6_3x2_32": (3.327e6, 0.241e9), "cct_7_3x1_32": (3.760e6, 0.947e9), "cct_7_3x2_32": (3.853e6, 0.275e9),
    "cct_14_7x2_224": (22.29e6, 5.11e9),
    "t2t_vit_7": (4.3e6, 1.1e9), "t2t_vit_10": (5.9e6, 1.5e9), "t2t_vit_12": (6.9e6, 1.8e9),
    "t2t_vit_14": (21.5e6, 4.8e9),
    "mobilenetv2_100": (3.4e6, 300e6),
    "mobilenetv2_ulsam": (2.96e6, 261.88e6), "mobilenetv2_ulsam_2x160": (2.77e6, 269.07e6),
    "mobilenetv2_ulsam_2x96_2x160": (2.54e6, 223.77e6),
    "tiny_moat_0": (3.4e6, 1.1e9), "tiny_moat_1": (5.1e6, 1.6e9), "tiny_moat_2": (9.8e6, 3.0e9),
    "tiny_moat_3": (19.5e6, 6.0e9),
}


def fvcore_total(model: torch.nn.Module, x: torch.Tensor) -> float:
    from fvcore.nn import FlopCountAnalysis

    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    flops = FlopCountAnalysis(model, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return float(flops.total())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fvcore", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    print("| model | input | paper params | ours | diff | paper MACs | ours (all) | ours (no attn matmul)"
          + (" | fvcore |" if args.fvcore else " |"))
    print("|---|---|---|---|---|---|---|---" + ("|---|" if args.fvcore else "|"))
    for name, (p_params, p_macs) in PAPER.items():
        model = timm.create_model(name).eval()
        size = tuple(model.pretrained_cfg["input_size"])
        x = torch.randn(1, *size)
        params = sum(p.numel() for p in model.parameters())
        count = count_macs(model, x)
        no_attn = count.total - count.by_category.get("attention", 0)
        row = (f"| {name} | {size[1]}x{size[2]} | {p_params / 1e6:.3f}M | {params / 1e6:.3f}M | "
               f"{100 * (params - p_params) / p_params:+.1f}% | {p_macs / 1e6:.1f}M | {count.total / 1e6:.1f}M | "
               f"{no_attn / 1e6:.1f}M |")
        if args.fvcore:
            row += f" {fvcore_total(model, x) / 1e6:.1f}M |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
