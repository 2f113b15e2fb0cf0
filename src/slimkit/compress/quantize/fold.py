"""Fold batch norms into the convs before them (in place), as ONNX export does, so PyTorch-side
rewrites (equalization, bias correction, fake-quant) see the weights ONNX Runtime will quantize."""

from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.compress.quantize.torch_graph import conv_bn_pairs, trace

__all__ = ["fold_batchnorm_", "neutralize_batchnorm_"]


@torch.no_grad()
def neutralize_batchnorm_(bn: nn.BatchNorm2d) -> None:
    """Make `bn` an identity in eval mode (in place); timm's BatchNormAct2d keeps its activation."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    if bn.affine:
        bn.weight.fill_(1.0)
        bn.bias.zero_()


@torch.no_grad()
def fold_batchnorm_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold each conv's batch norm into the conv's weight and bias (model changed in place).

    The batch norm stays in the model as an exact identity (running stats reset), so module names and
    classes are unchanged. Returns the folded (conv, batchnorm) pairs.
    """
    graph = trace(model)
    if graph is None:
        return []
    pairs = conv_bn_pairs(model, graph)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        conv.weight.mul_(factor.view(-1, *([1] * (conv.weight.ndim - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.clone())
        else:
            conv.bias.copy_(new_bias)
        neutralize_batchnorm_(bn)
    return pairs
