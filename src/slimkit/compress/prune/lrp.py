"""Relevance criterion after "Pruning by Explaining" (Yeom et al.), simplified.

What is implemented, exactly:
- Relevance is propagated from the logit of each sample's true class (the paper explains the
  target class too).
- The propagation rule is LRP-0 (the basic z-rule). For networks built from piecewise-linear
  layers (conv, linear, ReLU, max-pool, BatchNorm in eval mode) the LRP-0 relevance of an
  activation equals activation x gradient (Montavon et al., "Methods for interpreting and
  understanding deep neural networks", 2018), so we compute it with one autograd backward
  pass per batch instead of hand-written layer rules. Bias terms absorb their share, as LRP-0
  does. We do NOT implement the paper's epsilon or alpha-beta stabilised rules, and for
  non-piecewise-linear layers (GELU, SiLU, softmax attention) activation x gradient is only a
  first-order approximation of LRP.
- The relevance of a channel at a layer's output is sum over positions of a * da, taken in
  absolute value per sample and summed over the calibration samples.
- A dependency group scores a channel by the mean relevance over the layers that would lose it
  (conv / linear / norm outputs), normalised by the group mean like the other criteria.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from slimkit.compress.prune.criteria import Calibration, register_criterion

__all__ = ["RelevanceImportance", "channel_relevance"]

_TRACKED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _channel_dim(module: nn.Module, out: torch.Tensor) -> int:
    # Conv / BN / GN outputs are channels-first; Linear / LayerNorm act on the last dimension.
    return 1 if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) else -1


def channel_relevance(model: nn.Module, calib: Calibration) -> dict[nn.Module, torch.Tensor]:
    """LRP-0 relevance per output channel of every conv / linear / norm layer (see module doc)."""
    outputs: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, _inp, out) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            outputs[module] = out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _TRACKED)]
    relevance: dict[nn.Module, torch.Tensor] = {}
    try:
        with torch.enable_grad():
            for x, y in calib.batches:
                outputs.clear()
                logits = model(x)
                logits.gather(1, y.view(-1, 1)).sum().backward()
                for module, out in outputs.items():
                    if out.grad is None:
                        continue
                    r = _per_channel(out.detach() * out.grad, _channel_dim(module, out))
                    relevance[module] = relevance.get(module, 0) + r
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return relevance


def _per_channel(r: torch.Tensor, dim: int) -> torch.Tensor:
    r = r.movedim(dim, -1)
    per_sample = r.reshape(r.shape[0], -1, r.shape[-1]).sum(1)  # (batch, channels)
    return per_sample.abs().sum(0)


_OUT_FNS = {
    tp.prune_conv_out_channels,
    tp.prune_linear_out_channels,
    tp.prune_depthwise_conv_out_channels,
    tp.prune_batchnorm_out_channels,
    tp.prune_layernorm_out_channels,
    tp.prune_groupnorm_out_channels,
}


class RelevanceImportance(tp.importance.Importance):
    """Scores a group's channels by the relevance of the layers that lose them."""

    def __init__(self, relevance: dict[nn.Module, torch.Tensor]) -> None:
        self.relevance = relevance

    @torch.no_grad()
    def __call__(self, group):
        n = len(group[0].idxs)
        total, count = torch.zeros(n), torch.zeros(n)
        for item in group:
            dep, idxs = item.dep, item.idxs
            rel = self.relevance.get(dep.target.module)
            if rel is None or dep.handler not in _OUT_FNS or any(r is None for r in item.root_idxs):
                continue
            root = torch.as_tensor(item.root_idxs, dtype=torch.long)
            total.scatter_add_(0, root, rel[torch.as_tensor(idxs, dtype=torch.long)].float())
            count.scatter_add_(0, root, torch.ones(len(idxs)))
        if count.sum() == 0:
            return None
        imp = total / count.clamp(min=1)
        return imp / imp.mean().clamp(min=1e-12)


@register_criterion("lrp", needs_data=True)
def _lrp(model: nn.Module, calib: Calibration | None, seed: int):
    """Layer-wise relevance (LRP-0 via activation x gradient) of each channel on calibration data."""
    return RelevanceImportance(channel_relevance(model, calib))
