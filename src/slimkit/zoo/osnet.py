"""OSNet, the omni-scale network for person re-identification, registered into timm.

Paper: K. Zhou, Y. Yang, A. Cavallaro, T. Xiang, "Learning Generalisable Omni-Scale Representations
for Person Re-Identification", TPAMI 2021 (and "Omni-Scale Feature Learning for Person
Re-Identification", ICCV 2019).  Facts (stage widths 64/256/384/512 scaled by the width
multiplier, two OS blocks per stage, bottleneck reduction 4, four streams of 1..4 lite 3x3 convs,
a unified aggregation gate with reduction 16, the 512-d fc embedding, 256x128 input) come from the
paper and the authors' torchreid repository; the code here is our own.

Variants: ``osnet_x1_0``, ``osnet_x0_75``, ``osnet_x0_5``, ``osnet_x0_25``.

Interface: ``forward_features`` gives the conv5 map; ``forward_head`` pools, applies the
512-d fc embedding (Linear + BN1d + ReLU) and the identity classifier.  ``num_classes=0`` returns
the 512-d re-ID embedding, which is what the paper's parameter/Mult-Adds table counts
("layers used at test time": the classifier is excluded).

Ours where the paper is silent: the IN-augmented variants (OSNet-IBN / -AIN) are not registered;
weights are initialised like torchreid (Kaiming fan-out for convs, N(0, 0.01) for linears).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_cnn_, linear_head, zoo_cfg

__all__ = ["PAPER_TABLE", "OSNet", "OSBlock"]


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LiteConv3x3(nn.Sequential):
    """Point-wise (linear) then depth-wise 3x3, BN, ReLU: the factorised 3x3 of OSNet."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class AggregationGate(nn.Module):
    """Unified aggregation gate: channel weights from a 2-layer MLP on the pooled stream."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: 4 streams with 1..4 lite 3x3 convs, one shared gate."""

    def __init__(self, cin: int, cout: int, reduction: int = 4, streams: int = 4) -> None:
        super().__init__()
        mid = cout // reduction
        self.conv1 = _conv_bn(cin, mid)
        self.streams = nn.ModuleList(
            nn.Sequential(*[LiteConv3x3(mid, mid) for _ in range(depth)]) for depth in range(1, streams + 1)
        )
        self.gate = AggregationGate(mid)  # shared by all streams: the "unified" gate
        self.conv3 = _conv_bn(mid, cout, act=False)
        self.downsample = _conv_bn(cin, cout, act=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.conv1(x)
        fused = sum(self.gate(stream(mid)) for stream in self.streams)
        return torch.relu(self.conv3(fused) + self.downsample(x))


class OSNet(ClassifierMixin, nn.Module):
    """OSNet backbone + 512-d embedding + classifier (timm interface)."""

    def __init__(
        self,
        channels: tuple[int, int, int, int] = (64, 256, 384, 512),
        layers: tuple[int, int, int] = (2, 2, 2),
        feature_dim: int = 512,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = nn.Sequential(_conv_bn(in_chans, channels[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        stages = []
        for i, depth in enumerate(layers):
            blocks = [OSBlock(channels[i] if j == 0 else channels[i + 1], channels[i + 1]) for j in range(depth)]
            if i < len(layers) - 1:  # transition: 1x1 conv + 2x2 average pool
                blocks.append(nn.Sequential(_conv_bn(channels[i + 1], channels[i + 1]), nn.AvgPool2d(2, 2)))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.conv5 = _conv_bn(channels[-1], channels[-1])
        self.fc = nn.Sequential(
            nn.Linear(channels[-1], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
        self.num_features = self.head_hidden_size = feature_dim
        self.head = linear_head(feature_dim, num_classes)
        init_cnn_(self, norms=(nn.BatchNorm2d, nn.BatchNorm1d), conv_bias=True, nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc(x.mean((2, 3)))
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)


def _cfg() -> dict:
    return zoo_cfg("stem.0.0", url="", input_size=(3, 256, 128), pool_size=(8, 4))


#: The paper's table as printed (Zhou et al., TPAMI 2021, width-multiplier table; same numbers in the
#: torchreid model zoo): params without the identity classifier, Mult-Adds at 256x128.
PAPER_TABLE = {
    "osnet_x1_0": {"params": "2.2M", "macs": "978.9M"},
    "osnet_x0_75": {"params": "1.3M", "macs": "571.8M"},
    "osnet_x0_5": {"params": "0.6M", "macs": "272.9M"},
    "osnet_x0_25": {"params": "0.2M", "macs": "82.3M"},
}
default_cfgs = generate_default_cfgs(
    {name: _cfg() for name in ("osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25")}
)


def _create(variant: str, width: float, pretrained: bool, **kwargs) -> OSNet:
    channels = tuple(int(c * width) for c in (64, 256, 384, 512))
    return build_variant(OSNet, variant, pretrained, dict(channels=channels), kwargs)


@register_model
def osnet_x1_0(pretrained: bool = False, **kwargs) -> OSNet:
    """OSNet x1.0 (2.2M params without classifier, 978.9M Mult-Adds at 256x128)."""
    return _create("osnet_x1_0", 1.0, pretrained, **kwargs)


@register_model
def osnet_x0_75(pretrained: bool = False, **kwargs) -> OSNet:
    """OSNet x0.75."""
    return _create("osnet_x0_75", 0.75, pretrained, **kwargs)


@register_model
def osnet_x0_5(pretrained: bool = False, **kwargs) -> OSNet:
    """OSNet x0.5."""
    return _create("osnet_x0_5", 0.5, pretrained, **kwargs)


@register_model
def osnet_x0_25(pretrained: bool = False, **kwargs) -> OSNet:
    """OSNet x0.25."""
    return _create("osnet_x0_25", 0.25, pretrained, **kwargs)
