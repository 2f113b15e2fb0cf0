"""ULSAM: ultra-lightweight subspace attention, as a pluggable module and in MobileNetV2.

Paper: Rajat Saini, Nandan Kumar Jha, Bedanta Das, Sparsh Mittal, C. Krishna Mohan, "ULSAM:
Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks",
WACV 2020, arXiv:2006.15102. The module structure (per subspace: depth-wise 1x1 conv -> BN ->
ReLU -> 3x3/1 max pool -> point-wise 1x1 conv to one map -> BN -> ReLU -> softmax over space;
out = x * attention + x) is read from the official code https://github.com/Nandan91/ULSAM
(ulsam.py); the MobileNetV2 parameter/FLOP table from the authors' WACV slides and poster in
that repository. This file is our own implementation.

``ULSAM(channels, groups)`` splits the channels into ``groups`` subspaces of G = C/g channels and
learns one spatial attention map per subspace; it keeps the shape, so it can be dropped in after
any layer (``insert_ulsam_``) or put in place of a redundant block.

MobileNetV2 + ULSAM (paper's ImageNet ablation, g = 4):
- ``mobilenetv2_ulsam``:           2.96M params, 261.88M FLOPs, 71.52% top-1 (the headline model)
- ``mobilenetv2_ulsam_2x160``:     2.77M params, 269.07M FLOPs
- ``mobilenetv2_ulsam_2x96_2x160``: 2.54M params, 223.77M FLOPs
Where ULSAM goes is not stated in the material we could read. We inferred it from the counts:
they are reproduced exactly by replacing repeated (identity-shortcut) inverted-residual blocks
with ULSAM -- one 96-channel block at 14x14 (-0.118M params, -22.7M MACs) and one 160-channel
block at 7x7 (-0.320M, -15.5M) for the headline model; two 160-channel blocks; two of each. We
replace the last blocks of those stages. The backbone is timm's ``mobilenetv2_100``.

Counting: the paper's MobileNetV2 baseline is the 3.4M / 300M of the MobileNetV2 paper, while
MobileNetV2-1.0 as built by timm and torchvision has 3.50M parameters (300.8M MACs). The ULSAM
variants inherit that 3% offset; the README zoo section compares the reductions like with like.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import build_variant, zoo_cfg

__all__ = ["ULSAM", "insert_ulsam_", "mobilenetv2_with_ulsam"]


class ULSAM(nn.Module):
    """Subspace attention: one softmax spatial map per channel group; output = x * map + x."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        if channels % groups:
            raise ValueError(f"ULSAM: channels ({channels}) must be divisible by groups ({groups})")
        self.channels, self.groups = channels, groups
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
        self.dw_bn = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(3, 1, 1)
        # A grouped 1x1 conv maps each subspace of C/g channels to its own single attention map.
        self.pw = nn.Conv2d(channels, groups, 1, groups=groups, bias=True)
        self.pw_bn = nn.BatchNorm2d(groups)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = self.pool(self.act(self.dw_bn(self.dw(x))))
        a = self.act(self.pw_bn(self.pw(a)))  # (B, g, H, W)
        a = a.flatten(2).softmax(dim=-1).view(b, self.groups, 1, h, w)
        x_sub = x.view(b, self.groups, c // self.groups, h, w)
        return (x_sub * a + x_sub).view(b, c, h, w)


def insert_ulsam_(model: nn.Module, placements: dict[str, int], groups: int = 4) -> nn.Module:
    """Changes `model` in place: each named module `m` becomes Sequential(m, ULSAM(channels)).

    `placements` maps a qualified module name to the channel count that module outputs.
    """
    for name, channels in placements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Sequential(getattr(parent, child), ULSAM(channels, groups)))
    return model


# Variant -> [(stage index, block index)] of timm mobilenetv2_100 blocks replaced by ULSAM.
# Stage 4 holds the three 96-channel blocks (14x14), stage 5 the three 160-channel ones (7x7).
_REPLACED: dict[str, list[tuple[int, int]]] = {
    "mobilenetv2_ulsam": [(4, 2), (5, 2)],
    "mobilenetv2_ulsam_2x160": [(5, 1), (5, 2)],
    "mobilenetv2_ulsam_2x96_2x160": [(4, 1), (4, 2), (5, 1), (5, 2)],
}


def mobilenetv2_with_ulsam(replaced: list[tuple[int, int]], groups: int = 4, **kwargs: Any) -> nn.Module:
    """Returns a new timm MobileNetV2-1.0 whose listed (stage, block) blocks are replaced by ULSAM."""
    model = timm.create_model("mobilenetv2_100", pretrained=False, **kwargs)
    for stage, block in replaced:
        target = model.blocks[stage][block]
        if not getattr(target, "has_skip", False):
            raise ValueError(f"block {stage}.{block} changes shape; only identity blocks can be replaced")
        model.blocks[stage][block] = ULSAM(target.conv_pwl.out_channels, groups)
    return model


def _cfg() -> dict[str, Any]:
    return zoo_cfg("conv_stem", "classifier", pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
                   paper_ids="arXiv:2006.15102")


default_cfgs = generate_default_cfgs({name: _cfg() for name in _REPLACED})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    return build_variant(mobilenetv2_with_ulsam, variant, pretrained, dict(replaced=_REPLACED[variant]), kwargs,
                         feature_cfg=dict(flatten_sequential=True))


@register_model
def mobilenetv2_ulsam(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MobileNetV2 + ULSAM (g=4), one 96- and one 160-channel block replaced (paper: 2.96M, 261.88M)."""
    return _create("mobilenetv2_ulsam", pretrained, **kwargs)


@register_model
def mobilenetv2_ulsam_2x160(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MobileNetV2 + ULSAM (g=4), two 160-channel blocks replaced (paper: 2.77M, 269.07M)."""
    return _create("mobilenetv2_ulsam_2x160", pretrained, **kwargs)


@register_model
def mobilenetv2_ulsam_2x96_2x160(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MobileNetV2 + ULSAM (g=4), two 96- and two 160-channel blocks replaced (paper: 2.54M, 223.77M)."""
    return _create("mobilenetv2_ulsam_2x96_2x160", pretrained, **kwargs)
