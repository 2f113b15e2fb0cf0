"""Training-free ranking of architectures: zero-cost proxies, and the plain baselines they must beat.

Each proxy scores a child at random initialisation from one batch (higher = predicted better):
  synflow    sum |theta * dR/dtheta| with R the output sum of the all-ones input through |weights| (Tanaka et al.)
  grad_norm  the L2 norm of the cross-entropy gradient of all weights (Abdelfattah et al.)
  naswot     log|K| of the Hamming-similarity kernel of the ReLU codes over the batch (Mellor et al.)
  zen        Zen-score: log of the pre-pooling output's response to a small input perturbation at
             Gaussian init, plus the BatchNorm scales (Lin et al.; zen.py)
  deepmad    DeepMAD-style entropy of the final feature map from the structure alone (Shen et al.; deepmad.py)
  macs, params: the honest baselines (bigger nets do better), which zero-cost papers often fail to beat.
`rank_correlation` reports each one's Kendall tau against measured accuracies.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.utils.registry import Registry

__all__ = ["PROXIES", "score", "rank_correlation"]

Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
# zen and deepmad live in their own files, imported on first use
PROXIES: Registry[Proxy] = Registry("zero-cost proxy", modules={"zen": "slimkit.search.zen",
                                                                "deepmad": "slimkit.search.deepmad"})


@PROXIES.register("synflow")
def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model = model.double().eval()  # eval BN: the data-free path of the original method; double: no overflow
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad()
    model(torch.ones_like(x[:1], dtype=torch.float64)).sum().backward()
    with torch.no_grad():
        return float(sum((p * p.grad).sum() for p in model.parameters() if p.grad is not None))


@PROXIES.register("grad_norm")
def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.train().zero_grad()
    F.cross_entropy(model(x), y).backward()
    return float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)))


@PROXIES.register("naswot")
def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    codes: list[torch.Tensor] = []

    def keep(_m, _i, out):
        codes.append((out.flatten(1) > 0).double())

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    try:
        with torch.no_grad():
            model.train()(x)
    finally:
        for h in handles:
            h.remove()
    c = torch.cat(codes, 1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(kernel)[1])


@PROXIES.register("params")
def params(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(sum(p.numel() for p in model.parameters()))


@PROXIES.register("macs")
def macs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from slimkit.profile import count_macs

    return float(count_macs(model.eval(), x[:1]).total)


def score(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None,
          seed: int = 0) -> dict[str, float]:
    """Every proxy of a freshly built (seeded) model; each proxy gets its own copy (some change weights)."""
    out = {}
    for name in names or PROXIES.names():
        torch.manual_seed(seed)
        out[name] = PROXIES.get(name)(build(), x, y)
    return out


def rank_correlation(scores: list[dict[str, float]], accuracies: list[float]) -> dict[str, float]:
    """Kendall tau (tau-b) of each proxy's scores against the accuracies."""
    from scipy.stats import kendalltau

    return {name: float(kendalltau([s[name] for s in scores], accuracies).statistic) for name in scores[0]}
