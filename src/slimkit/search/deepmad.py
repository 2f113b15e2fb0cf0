"""A DeepMAD-style entropy score (Shen et al., DeepMAD, CVPR 2023): an architecture's expressiveness from its
structure alone, no weights, no data.

DeepMAD models a CNN as an information system: each output unit of a layer sums `fan_in` inputs
(c_in / groups * k_h * k_w), so under a unit-variance random model every layer multiplies the spread
of the signal by ~fan_in, and the differential entropy of the final feature map grows as

    H = log(r^2 * w) * sum_i log(fan_in_i)

with r x r and w the spatial size and channels of the last convolution's output, the sum over every
convolution in forward order. Only the final map is scored here; DeepMAD's multi-scale weighting of
the stage outputs and its effectiveness constraint (depth / mean width <= rho) are not applied:
used as a ranking proxy, the score compares architectures rather than designing one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.search.proxies import PROXIES

__all__ = ["deepmad_entropy", "conv_structure"]


@torch.no_grad()
def conv_structure(model: nn.Module, x: torch.Tensor) -> list[tuple[int, tuple[int, ...]]]:
    """(fan_in, output shape C x H x W) of every convolution, in the order one forward pass runs them."""
    seen: list[tuple[int, tuple[int, ...]]] = []

    def keep(m: nn.Conv2d, _inp, out):
        fan_in = m.in_channels // m.groups * math.prod(m.kernel_size)
        seen.append((fan_in, tuple(out.shape[1:])))

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model.eval()(x[:1])
    finally:
        for h in handles:
            h.remove()
    return seen


@PROXIES.register("deepmad")
def deepmad_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The entropy H of the last convolution's output feature map (the model is unchanged)."""
    convs = conv_structure(model, x)
    if not convs:
        return 0.0
    c, *spatial = convs[-1][1]
    return math.log(c * math.prod(spatial)) * sum(math.log(fan_in) for fan_in, _ in convs)
