"""Pruning at initialization with layer-wise ratios: PreCropping, after "Structured Pruning is All
You Need for Pruning CNNs at Initialization" (Cai et al.).

The paper's finding: at initialization what matters is each layer's compression ratio, not which
weights go; so take the layer-wise ratios a pruning-at-initialization score gives and crop whole
channels to match, giving a dense, narrower model to train from scratch.

What is implemented:
1. Layer-wise densities from SynFlow scores (Tanaka et al. 2020; data-free): |w * dR/dw| with all
   weights made positive and an all-ones input, R = sum of the outputs. One global threshold at the
   target's fraction of conv/linear weights gives each layer l its kept fraction d_l.
2. Channel ratios: a layer's weights scale with k_in * k_out, where k are the kept fractions of the
   channel groups feeding and leaving it; we solve log k_in + log k_out = log d_l for the group
   fractions by least squares (clamped to [1 - max_layer_prune, 1]).
3. The group fractions k_g set the *shape* of the allocation; one exponent a scales it
   (keep_g = size_g * k_g^a) and is bisected so the cropped model meets the MACs/params target,
   exactly like every other slimkit target. Weights stay at their initial values; train afterwards.
Not implemented: the paper's other score sources (SNIP, GraSP) and its channel-expansion variant.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from slimkit.compress.prune.api import PruneResult, prune_
from slimkit.compress.prune.config import PruneConfig
from slimkit.compress.prune.structured import Plan

__all__ = ["synflow_densities", "group_fractions", "precrop_"]


def synflow_densities(model: nn.Module, example_inputs: torch.Tensor, density: float) -> dict[str, float]:
    """Kept fraction per conv/linear layer when SynFlow keeps `density` of all their weights."""
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_()
    layers = {n: m for n, m in probe.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    probe.zero_grad(set_to_none=True)
    ones = torch.ones_like(example_inputs[:1], dtype=torch.float64)
    with torch.enable_grad():
        probe(ones).sum().backward()
    scores = {n: (m.weight * m.weight.grad).abs().detach().flatten() for n, m in layers.items() if m.weight.grad is not None}
    flat = torch.cat(list(scores.values()))
    n_keep = max(1, int(round(density * flat.numel())))
    threshold = torch.topk(flat, n_keep).values[-1]
    return {n: float((s >= threshold).float().mean()) for n, s in scores.items()}


def group_fractions(plan: Plan, densities: dict[str, float], min_keep: float) -> list[float]:
    """Least-squares kept fraction per group so that k_in * k_out matches each layer's density."""
    index = {}
    rows, rhs = [], []
    for gi, g in enumerate(plan.groups):
        for name, kind, _ in g.dims:
            index.setdefault(name, {})[kind] = gi
    for name, kinds in index.items():
        if name not in densities:
            continue
        row = torch.zeros(len(plan.groups), dtype=torch.float64)
        for gi in kinds.values():
            row[gi] += 1.0
        rows.append(row)
        rhs.append(math.log(max(densities[name], 1e-4)))
    if not rows:
        return [1.0] * len(plan.groups)
    a, b = torch.stack(rows), torch.tensor(rhs, dtype=torch.float64).unsqueeze(1)
    z = torch.linalg.lstsq(a, b).solution.squeeze(1)
    return [float(min(1.0, max(min_keep, math.exp(v)))) for v in z]


def precrop_(model: nn.Module, config: PruneConfig, example_inputs: torch.Tensor) -> PruneResult:
    """Crop an *untrained* `model` in place to `config`'s MACs/params target with SynFlow layer ratios."""
    target = config.parsed_target
    density = target.ratio if target is not None else 1.0 - (config.ratio or 0.0)
    densities = synflow_densities(model, example_inputs, density)
    min_keep = 1.0 - config.max_layer_prune

    def allocator(plan: Plan, round_to: int):
        fractions = group_fractions(plan, densities, min_keep)

        def alloc(level: float) -> list[int]:
            exponent = 4.0 * level / config.max_layer_prune  # level 0 -> nothing cropped
            keeps = []
            for g, k in zip(plan.groups, fractions):
                keep = max(g.size * max(k ** exponent, min_keep), 1.0)
                unit = max(1, round_to // math.gcd(round_to, g.ch_groups)) if round_to > 1 and g.size > round_to else 1
                keeps.append(int(min(g.size, max(unit, round(keep / unit) * unit))))
            return keeps

        return alloc

    return prune_(model, config, example_inputs, allocator=allocator)
