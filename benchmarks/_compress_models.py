"""The two models of compress_bench.py: a small residual CNN and a MobileNetV2-style net (1-channel input)."""

import torch.nn as nn


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


def resnet_small(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """Stem + 3 residual stages (16, 32, 64 channels; the first at stride 2), BatchNorm, global pooling."""
    return nn.Sequential(nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         _Residual(16, 16, 2), _Residual(16, 32, 2), _Residual(32, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


resnet_small.input_size = (1, 28, 28)


class _Inverted(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.body(x) if self.use_skip else self.body(x)


def mbv2_small(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """A MobileNetV2-style net: stem, stride-2 stem, 6 inverted residual blocks (16 -> 96 channels), 1x1 head of 256."""
    blocks = [_Inverted(16, 24, 2), _Inverted(24, 24, 1), _Inverted(24, 48, 2), _Inverted(48, 48, 1),
              _Inverted(48, 96, 1), _Inverted(96, 96, 1)]
    return nn.Sequential(nn.Conv2d(in_chans, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(), *blocks,
                         nn.Conv2d(96, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes))


mbv2_small.input_size = (1, 28, 28)
