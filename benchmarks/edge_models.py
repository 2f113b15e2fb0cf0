"""Models of benchmarks/edge_bench.py: the Fashion-MNIST parent CNN (cascade, split) and an MCU-style network
with large kernels in its first stages (patch redistribution)."""

import torch.nn as nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def parent(num_classes: int = 10, width: int = 24) -> nn.Module:
    w = width
    return nn.Sequential(*_block(1, w), *_block(w, w), nn.MaxPool2d(2), *_block(w, 2 * w), *_block(2 * w, 2 * w),
                         nn.MaxPool2d(2), *_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, num_classes))


def parent_wide(num_classes: int = 10) -> nn.Module:
    """The parent at twice the width (4x the MACs): a cascade pairing where ONNX Runtime's fixed cost per
    call is a smaller share of the big model's latency."""
    return parent(num_classes, width=48)


parent.input_size = parent_wide.input_size = (1, 28, 28)


class InvertedResidual(nn.Module):
    """MobileNetV2-style block with a k x k depthwise conv; adds its input back when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        layers = [] if expand == 1 else [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mcunet_like(num_classes: int = 10) -> nn.Module:
    """An MCU-style network whose first stages use 5x5/7x7 kernels and residual blocks (the patch stage that
    receptive-field redistribution slims); for Fashion-MNIST upscaled to 56x56."""
    stem = [nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
    blocks = [InvertedResidual(16, 16, 3, 1, 1), InvertedResidual(16, 24, 5, 3, 2), InvertedResidual(24, 24, 5, 3, 1),
              InvertedResidual(24, 24, 7, 3, 1), InvertedResidual(24, 40, 3, 4, 2), InvertedResidual(40, 40, 3, 4, 1),
              InvertedResidual(40, 80, 3, 4, 1)]
    return nn.Sequential(nn.Sequential(*stem), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(80, num_classes))


mcunet_like.input_size = (1, 56, 56)
