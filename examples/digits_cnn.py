"""A small CNN for the embedded digits data: slimkit's default demo model.

Named on the command line as `examples/digits_cnn.py:digits_cnn`.
"""

import torch.nn as nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def digits_cnn(num_classes: int = 10, in_chans: int = 3, width: int = 28) -> nn.Module:
    """A VGG-style CNN: four stages of two 3x3 conv blocks, global pooling, a linear head."""
    widths = [width, width * 2, width * 4, width * 8]
    layers, cin = [], in_chans
    for i, w in enumerate(widths):
        layers += [_block(cin, w), _block(w, w)]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


digits_cnn.input_size = (3, 64, 64)
