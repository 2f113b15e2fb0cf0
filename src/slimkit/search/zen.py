"""Zen-score (Lin et al., Zen-NAS, ICCV 2021): the expressivity of a network at Gaussian initialisation.

With every weight drawn from N(0, 1), Gaussian inputs x and a small perturbation alpha * eps,

    Zen(F) = log E ||f(x) - f(x + alpha * eps)||_F  +  sum_i log sigma_i

where f is the feature map before global average pooling and sigma_i = sqrt(mean_j var_ij) is the
per-channel batch standard deviation seen by the i-th BatchNorm layer (training mode) on x. BatchNorm
normalises each layer's output, so the first term alone would ignore how much the layers scale the
signal; the second term puts that scale back. No data and no labels are used: only the batch shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.search.proxies import PROXIES

__all__ = ["zen_score", "zen_of"]

ALPHA = 0.01


def _pre_pool_target(model: nn.Module) -> nn.Module | None:
    """The last global pooling module: its input is the pre-GAP feature map."""
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d))]
    return pools[-1] if pools else None


def _features(model: nn.Module, x: torch.Tensor, bn_var: list[torch.Tensor] | None) -> torch.Tensor:
    """f(x): the pre-pooling feature map (the model's output if it has no global pool); with `bn_var`,
    also append each BatchNorm input's per-channel batch variance (biased, as BatchNorm computes it)."""
    feats: list[torch.Tensor] = []
    handles = []
    target = _pre_pool_target(model)
    if target is not None:
        handles.append(target.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0])))
    if bn_var is not None:
        def keep(_m, inp):
            t = inp[0]
            dims = [d for d in range(t.dim()) if d != 1]
            bn_var.append(t.var(dim=dims, unbiased=False))
        handles += [m.register_forward_pre_hook(keep) for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return feats[-1] if feats else out


@torch.no_grad()
def zen_of(model: nn.Module, x: torch.Tensor, eps: torch.Tensor, alpha: float = ALPHA) -> float:
    """Zen-score of `model` as it is (no re-initialisation) for given inputs `x` and perturbation `eps`."""
    model.train()  # BatchNorm on batch statistics, as the definition requires
    bn_var: list[torch.Tensor] = []
    f = _features(model, x, bn_var)
    f_perturbed = _features(model, x + alpha * eps, None)
    delta = (f - f_perturbed).flatten(1).norm(dim=1).mean()
    bn_term = sum(0.5 * math.log(float(v.mean())) for v in bn_var)
    return math.log(float(delta)) + bn_term


@PROXIES.register("zen")
def zen_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """Changes `model` (weights re-drawn from N(0, 1), float64): Zen-score on Gaussian inputs of x's shape."""
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
                if m.bias is not None:
                    m.bias.zero_()
    inputs = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return zen_of(model, inputs, noise)
