"""SkipNet (SkipblockNet): MobileNetV3-Large with two skip blocks, registered into timm.

Paper: L. Abrahamyan, V. Ziatchin, Y. Chen, N. Deligiannis, "Bias Loss for Mobile Neural
Networks", ICCV 2021.  The paper trains SkipNet with the Bias Loss
(:mod:`slimkit.engine.losses.bias_loss`).  Facts (the MobileNetV3-Large block table, the stem and
base block, the two skip blocks fed from the base block's output -- 16 -> x6 -> 40 channels, 5x5,
into the 28x28 stage and 16 -> x2.3 -> 80 channels, 3x3, into the 14x14 stage -- and the
1280-wide classifier) come from the paper and the authors' repository (lusinlu/biasloss_skipblocknet);
the code here is our own.

Variants: only ``skipnet_m``, the configuration the authors released (5.5M params, 246M FLOPs
in the paper's figure; FLOPs there include BatchNorm, as fvcore counts them).  The paper's XS/S/L
points (about 2.3M/80M, 3.6M/150M, 7.1M/364M, read off the figure in the paper and README; the
table was not reachable from this machine) are not reproduced: the repository builds no other
width, and uniform width multipliers (0.5/0.75/1.25) miss those points by 7-18% in params or FLOPs, so we do not
register guessed variants under the paper's names.  ``SkipNet(width=...)`` still builds them.

Ours where the paper is silent:
- the skip blocks pool the base features to the *current* size of the main path (adaptive), not
  to a fixed 28/14, so inputs other than 224x224 work; at 224 it is identical;
- the skip blocks' input width follows the base block's width (the repository hard-codes 16);
- ``forward_features`` returns the last 1x1 conv map (the "features" the Bias Loss reads).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_cnn_, linear_head, zoo_cfg

__all__ = ["PAPER_TABLE", "SkipNet", "SkipBlock"]

# kernel, expansion, out channels, squeeze-excite, hard-swish, stride; stages end at the '|'
_BLOCKS = (
    ((3, 4, 24, 0, 0, 2), (3, 3, 24, 0, 0, 1), (5, 3, 40, 1, 0, 2), (5, 3, 40, 1, 0, 1), (5, 6, 40, 1, 1, 1)),
    ((3, 6, 80, 0, 1, 2), (3, 2.5, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1), (3, 2.3, 80, 0, 1, 1)),
    ((3, 6, 112, 1, 1, 1), (3, 6, 112, 1, 1, 1)),
    ((5, 6, 160, 1, 1, 2), (5, 6, 160, 1, 1, 1), (5, 6, 160, 1, 1, 1)),
)
# skip blocks: expansion, out channels, kernel; they feed stage 1 and stage 2
_SKIPS = ((6, 40, 5), (2.3, 80, 3))


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet channel rounding: nearest multiple of `divisor`, never 10% below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: Linear-ReLU-Linear-hard-sigmoid on the pooled map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = make_divisible(channels // 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


class InvertedResidual(nn.Module):
    """pw expand - dw kxk - (SE) - pw project, residual when shapes allow."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool, hs: bool) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act(),
            SqueezeExcite(hidden) if se else nn.Identity(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class SkipBlock(nn.Module):
    """Adaptive average pool to the target size, then an inverted residual (ReLU, no SE)."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int) -> None:
        super().__init__()
        self.block = InvertedResidual(cin, hidden, cout, k, 1, se=False, hs=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.block(F.adaptive_avg_pool2d(x, size))


class SkipNet(ClassifierMixin, nn.Module):
    """SkipNet / SkipblockNet (timm interface)."""

    head_in_attr = "head_hidden_size"

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                 head_dim: int = 1280, global_pool: str = "avg") -> None:  # fmt: skip
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        cin = make_divisible(16 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.Hardswish())
        self.base_block = InvertedResidual(cin, cin, cin, 3, 1, se=False, hs=True)
        base, stages, hidden = cin, [], cin
        for stage in _BLOCKS:
            blocks = []
            for k, t, c, se, hs, s in stage:
                cout, hidden = make_divisible(c * width), make_divisible(cin * t)
                blocks.append(InvertedResidual(cin, hidden, cout, k, s, bool(se), bool(hs)))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.skips = nn.ModuleList(
            SkipBlock(base, make_divisible(base * t), make_divisible(c * width), k) for t, c, k in _SKIPS
        )
        self.conv_head = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.num_features = hidden
        self.head_hidden_size = make_divisible(head_dim * width) if width > 1.0 else head_dim
        self.pre_logits = nn.Sequential(nn.Linear(hidden, self.head_hidden_size), nn.Hardswish())
        self.head = linear_head(self.head_hidden_size, num_classes)
        init_cnn_(self, norms=(nn.BatchNorm2d,))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_block(self.stem(x))
        x = self.stages[0](base)
        x = self.stages[1](x + self.skips[0](base, x.shape[-2:]))
        x = self.stages[2](x + self.skips[1](base, x.shape[-2:]))
        return self.conv_head(self.stages[3](x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x.mean((2, 3)))
        if pre_logits:
            return x
        return self.head(F.dropout(x, self.drop_rate, self.training))


def _cfg() -> dict:
    return zoo_cfg("stem.0", url="", pool_size=(7, 7))


#: SkipNet-M in the paper's FLOPs/params figure (ICCV 2021, Fig. "FLOPs vs top-1", also in the
#: repository README); read off the plot, so good to about +-2M FLOPs and +-0.1M params.  Its FLOPs
#: include BatchNorm (2 per element, as fvcore counts it).
PAPER_TABLE = {"skipnet_m": {"params": "5.5M", "macs": "246M"}}
_WIDTHS = {"skipnet_m": 1.0}
default_cfgs = generate_default_cfgs({name: _cfg() for name in _WIDTHS})


def _create(variant: str, pretrained: bool, **kwargs) -> SkipNet:
    return build_variant(SkipNet, variant, pretrained, dict(width=_WIDTHS[variant]), kwargs)


@register_model
def skipnet_m(pretrained: bool = False, **kwargs) -> SkipNet:
    """SkipNet-M: the authors' released configuration (MobileNetV3-Large widths + 2 skip blocks)."""
    return _create("skipnet_m", pretrained, **kwargs)
