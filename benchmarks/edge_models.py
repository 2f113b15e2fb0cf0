"""The Fashion-MNIST parent CNN of the cascade benchmark (benchmarks/edge_bench.py cascade)."""

import torch.nn as nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def parent(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(*_block(1, 24), *_block(24, 24), nn.MaxPool2d(2), *_block(24, 48), *_block(48, 48),
                         nn.MaxPool2d(2), *_block(48, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(96, num_classes))


parent.input_size = (1, 28, 28)
