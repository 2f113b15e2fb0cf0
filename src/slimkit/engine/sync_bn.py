"""Synchronised BatchNorm for data-parallel training on any device (CPU/gloo included).

Without it, each rank normalises its own slice of the global batch with that slice's
statistics, so N ranks compute something different from one process with the same
global batch. torch.nn.SyncBatchNorm fixes that on GPUs only (it refuses CPU tensors),
so slimkit carries its own: per channel, every rank all-reduces (sum, sum of squares,
count) and normalises with the global mean and (biased) variance. The backward pass of
that all-reduce sums the statistics' gradients over the ranks, which is exactly the
gradient of the global-batch objective once DDP averages the parameter gradients.

`convert_sync_batchnorm_` swaps BatchNorm1d/2d/3d for it in place (same Parameter and
buffer objects, so optimizers and checkpoints see no change); `revert_sync_batchnorm_`
swaps back, so the saved model holds plain BatchNorm layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm_", "revert_sync_batchnorm_"]

_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the whole global batch (all ranks)."""

    plain_class: type = nn.BatchNorm2d

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {input.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        c = x.shape[1]
        count = x.new_full((1,), x.numel() / c)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1.0))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - factor).add_(factor * mean)
        self.running_var.mul_(1 - factor).add_(factor * unbiased_var)


def _swap(module: nn.Module, new_class: type) -> nn.Module:
    """A module of `new_class` sharing `module`'s parameters, buffers and settings (no copies)."""
    swapped = new_class.__new__(new_class)
    swapped.__dict__.update(module.__dict__)
    if new_class is GlobalBatchNorm:
        swapped.plain_class = type(module)
    else:
        swapped.__dict__.pop("plain_class", None)
    return swapped


def _replace_all(model: nn.Module, match, make) -> int:
    count = 0
    for name, module in list(model.named_modules()):
        if not name or not match(module):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(module))
        count += 1
    return count


def convert_sync_batchnorm_(model: nn.Module) -> int:
    """Make every plain BatchNorm of `model` (changed in place) a GlobalBatchNorm; returns how many."""
    return _replace_all(model, lambda m: type(m) in _PLAIN, lambda m: _swap(m, GlobalBatchNorm))


def revert_sync_batchnorm_(model: nn.Module) -> int:
    """Undo convert_sync_batchnorm_ (model changed in place); returns how many layers went back."""
    return _replace_all(model, lambda m: type(m) is GlobalBatchNorm, lambda m: _swap(m, m.plain_class))
