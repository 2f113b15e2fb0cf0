"""Unstructured magnitude pruning: masks, the gradual polynomial schedule, layer-adaptive scores.

- Scopes: "layer" (every layer at the same sparsity), "global" (one |w| threshold for all), and
  "lamp": layer-adaptive allocation by LAMP scores (Lee et al., ICLR 2021: a weight's score is
  w^2 divided by the sum of w^2 of the weights of its layer that are not smaller), ranked
  globally. The "Efficient Joint Optimization of Layer-Adaptive Weight Pruning" paper's
  rate-distortion dynamic programme is in `rd_allocation.py` (scope "rd").
- Schedule: Zhu & Gupta's "To prune, or not to prune": s_t = s_f + (s_i - s_f) (1 - (t - t0)/(n dt))^3.
- Masks are plain tensors held outside the model and folded into the weights (w *= mask), so a
  saved model is an ordinary dense model whose zeros compress well; dense runtimes gain no
  speed from them.
"""

from __future__ import annotations

import gzip

import torch
import torch.nn as nn

__all__ = ["prunable_weights", "magnitude_masks", "apply_masks", "polynomial_sparsity", "GradualPruner",
           "sparsity_of", "compressed_sizes"]


def prunable_weights(model: nn.Module, skip: list[nn.Module] | None = None) -> dict[str, nn.Parameter]:
    """Weights of conv and linear layers (biases and norms stay dense)."""
    skip_ids = {id(m) for m in (skip or [])}
    return {f"{n}.weight": m.weight for n, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and id(m) not in skip_ids}


def _lamp_scores(w: torch.Tensor) -> torch.Tensor:
    sq = w.detach().flatten().pow(2)
    order = torch.argsort(sq)
    sorted_sq = sq[order]
    # sum of squares of this weight and every larger one (suffix sums of the ascending order)
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores = torch.empty_like(sq)
    scores[order] = sorted_sq / suffix.clamp(min=1e-30)
    return scores.view_as(w)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the `sparsity` fraction of weights with the smallest scores."""
    if scope == "layer":
        return {n: _keep_top(w.detach().abs(), sparsity) for n, w in weights.items()}
    scores = {n: (_lamp_scores(w) if scope == "lamp" else w.detach().abs()) for n, w in weights.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    n_cut = int(round(sparsity * flat.numel()))
    if n_cut == 0:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    threshold = torch.kthvalue(flat, n_cut).values
    masks = {n: s > threshold for n, s in scores.items()}
    if scope == "lamp":
        for n, s in scores.items():  # LAMP keeps each layer's largest weight (score 1) alive
            masks[n].view(-1)[torch.argmax(s)] = True
    return masks


def _keep_top(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_cut = int(round(sparsity * score.numel()))
    if n_cut == 0:
        return torch.ones_like(score, dtype=torch.bool)
    threshold = torch.kthvalue(score.flatten(), n_cut).values
    return score > threshold


@torch.no_grad()
def apply_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Fold the masks into the weights in place (w *= mask)."""
    for n, w in weights.items():
        if n in masks:
            w.mul_(masks[n].to(w.dtype))


def polynomial_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: `initial` at `begin`, `final` from `end` on."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / max(end - begin, 1)
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualPruner:
    """Raises sparsity along the polynomial schedule every `frequency` steps; call after each step."""

    def __init__(self, model: nn.Module, final: float, total_steps: int, scope: str = "global",
                 frequency: int = 10, skip: list[nn.Module] | None = None, begin_fraction: float = 0.0,
                 end_fraction: float = 0.75) -> None:
        self.weights = prunable_weights(model, skip)
        self.final, self.scope, self.frequency = final, scope, max(1, frequency)
        self.begin = int(begin_fraction * total_steps)
        self.end = max(self.begin + 1, int(end_fraction * total_steps))
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0

    def __call__(self, step: int, total: int) -> None:
        if step % self.frequency == 0 or step >= self.end:
            target = polynomial_sparsity(step, self.final, self.begin, self.end)
            if target > self.sparsity:
                self.masks = magnitude_masks(self.weights, target, self.scope)
                self.sparsity = target
        apply_masks(self.weights, self.masks)  # keep pruned weights at zero between updates


def sparsity_of(model: nn.Module, skip: list[nn.Module] | None = None) -> float:
    weights = prunable_weights(model, skip)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / max(total, 1)


def compressed_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's safetensors file, raw and gzip-compressed (level 6), and of a sparse
    encoding of the conv/linear weights (nonzero fp32 values + 1-bit occupancy bitmap) plus the
    other tensors dense."""
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    raw = save(state)
    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    sparse = 0
    for name, t in state.items():
        if name in weights:
            sparse += int((t != 0).sum()) * t.element_size() + (t.numel() + 7) // 8
        else:
            sparse += t.numel() * t.element_size()
    return {"safetensors": len(raw), "gzip": len(gzip.compress(raw, 6)), "sparse_bitmap": sparse}
