"""The elastic supernet: one set of weights holding every child of a search space.

Each layer owns the largest weight of its space; a child uses the leading slice of it (the first
`c` channels, the centre `k x k` of the depthwise kernel: BigNAS/Once-for-All weight sharing without
OFA's kernel-transform matrices). `extract(arch)` copies those slices into an ordinary `ChildNet`
whose outputs equal the supernet's run with the same choices (the same sliced values, the same ops).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.search.child import ChildNet, child_spec
from slimkit.search.irmb import attend, num_heads
from slimkit.search.space import Arch, SearchSpace

__all__ = ["Supernet", "ElasticBN"]


class ElasticBN(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its largest size (C taken from the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            # momentum None: a cumulative average, which BN recalibration of a child relies on
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            use_batch, factor, self.eps)


def _conv(x: torch.Tensor, conv: nn.Conv2d, out: int, k: int | None = None, groups: int = 1) -> torch.Tensor:
    """conv's leading out x in (x centre k x k) slice applied to x; the slice is made contiguous, as a copy is."""
    w = conv.weight[:out] if groups > 1 else conv.weight[:out, : x.shape[1]]
    full = conv.kernel_size[0]
    k = k or full
    lo = (full - k) // 2
    w = w[:, :, lo:lo + k, lo:lo + k].contiguous()
    bias = None if conv.bias is None else conv.bias[:out]
    return F.conv2d(x, w, bias, conv.stride, k // 2, 1, groups)


class ElasticBlock(nn.Module):
    """An inverted-residual block at its largest: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, max_in: int, max_hidden: int, max_out: int, max_k: int, stride: int, first: bool):
        super().__init__()
        self.first = first
        self.expand = nn.Conv2d(max_in, max_hidden, 1, bias=False)
        self.bn1 = ElasticBN(max_hidden)
        self.dw = nn.Conv2d(max_hidden, max_hidden, max_k, stride, max_k // 2, groups=max_hidden, bias=False)
        self.bn2 = ElasticBN(max_hidden)
        self.project = nn.Conv2d(max_hidden, max_out, 1, bias=False)
        self.bn3 = ElasticBN(max_out)

    def forward(self, x: torch.Tensor, row: list) -> torch.Tensor:
        _, hidden, out, k = row[:4]
        h = F.relu6(self.bn1(_conv(x, self.expand, hidden)))
        h = F.relu6(self.bn2(_conv(h, self.dw, hidden, k, groups=hidden)))
        y = self.bn3(_conv(h, self.project, out))
        return y + x if self.residual(x.shape[1], out) else y

    def residual(self, cin: int, out: int) -> bool:
        return not self.first or (self.dw.stride[0] == 1 and cin == out)

    def pairs(self, child: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """(child layer, own layer) for every layer `extract` copies."""
        return [(getattr(child, n), getattr(self, n)) for n in ("expand", "bn1", "dw", "bn2", "project", "bn3")]


class ElasticIRMB(nn.Module):
    """An iRMB (slimkit.search.irmb) at its largest; Q and K exist only where attention is a choice."""

    def __init__(self, max_in: int, max_hidden: int, max_out: int, max_k: int, stride: int, attention: bool,
                 head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.norm = ElasticBN(max_in)
        self.v = nn.Conv2d(max_in, max_hidden, 1, bias=True)
        self.q = nn.Conv2d(max_in, max_in, 1, bias=True) if attention else None
        self.k = nn.Conv2d(max_in, max_in, 1, bias=True) if attention else None
        self.dw = nn.Conv2d(max_hidden, max_hidden, max_k, stride, max_k // 2, groups=max_hidden, bias=False)
        self.bn2 = ElasticBN(max_hidden)
        self.proj = nn.Conv2d(max_hidden, max_out, 1, bias=False)
        self.bn3 = ElasticBN(max_out)

    def forward(self, x: torch.Tensor, row: list) -> torch.Tensor:
        cin, hidden, out, k, _, residual, attention = row
        n = self.norm(x)
        h = F.silu(_conv(n, self.v, hidden))
        if attention:
            h = attend(_conv(n, self.q, cin), _conv(n, self.k, cin), h, num_heads(cin, self.head_dim))
        local = F.silu(self.bn2(_conv(h, self.dw, hidden, k, groups=hidden)))
        y = self.bn3(_conv(local + h if residual else local, self.proj, out))
        return y + x if residual else y

    def pairs(self, child: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        names = ["norm", "v", "dw", "bn2", "proj", "bn3"] + (["q", "k"] if child.q is not None else [])
        return [(getattr(child, n), getattr(self, n)) for n in names]


def _make_block(space: SearchSpace, stage: int, j: int, cin: int, cout: int) -> nn.Module:
    """Block j of a stage at its largest (the first takes the previous stage's channels and the stride)."""
    spec, emax, kmax = space.stages[stage], max(space.expands), max(space.kernels)
    stride = spec.stride if j == 0 else 1
    if space.block == "irmb":
        return ElasticIRMB(cin, cin * emax, cout, kmax, stride, True in space.attention_options(stage, j),
                           space.head_dim)
    return ElasticBlock(cin, cin * emax, cout, kmax, stride, j == 0)


class Supernet(nn.Module):
    """Every child of `space` in one module; `set_active(arch)` picks the child that forward() runs."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        wmax = max(space.widths)
        self.act = F.silu if space.block == "irmb" else F.relu6
        self.stem = nn.Conv2d(space.in_chans, space.stem_out(wmax), 3, space.stem_stride, 1, bias=False)
        self.stem_bn = ElasticBN(space.stem_out(wmax))
        self.stages = nn.ModuleList()
        cin = space.stem_out(wmax)
        for i, stage in enumerate(space.stages):
            cout = space.channels(i, wmax)
            blocks = [_make_block(space, i, j, cin if j == 0 else cout, cout) for j in range(max(stage.depths))]
            self.stages.append(nn.ModuleList(blocks))
            cin = cout
        self.head = nn.Conv2d(cin, space.head_channels, 1, bias=False)
        self.head_bn = ElasticBN(space.head_channels)
        self.classifier = nn.Linear(space.head_channels, space.num_classes)
        self.active = space.largest()

    def set_active(self, arch: Arch) -> None:
        """Changes which child forward() runs (the weights are untouched)."""
        self.active = self.space.validate_arch(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = child_spec(self.space, self.active)
        x = self.act(self.stem_bn(_conv(x, self.stem, spec["stem"])))
        for row, (si, bi) in zip(spec["blocks"], _positions(self.active)):
            x = self.stages[si][bi](x, row)
        x = self.act(self.head_bn(_conv(x, self.head, self.space.head_channels)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.classifier.weight, self.classifier.bias)

    @torch.no_grad()
    def extract(self, arch: Arch) -> ChildNet:
        """A new ordinary ChildNet holding `arch`'s slice of the weights (the supernet is unchanged)."""
        self.space.validate_arch(arch)
        spec = child_spec(self.space, arch)
        child = ChildNet(spec)
        _copy_conv(child.stem[0], self.stem)
        _copy_bn(child.stem[1], self.stem_bn)
        for block, (si, bi) in zip(child.blocks, _positions(arch)):
            for dst, src in self.stages[si][bi].pairs(block):
                (_copy_bn if isinstance(dst, nn.BatchNorm2d) else _copy_conv)(dst, src)
        _copy_conv(child.head[0], self.head)
        _copy_bn(child.head[1], self.head_bn)
        child.classifier.load_state_dict(self.classifier.state_dict())
        return child.train(self.training)


def _positions(arch: Arch) -> list[tuple[int, int]]:
    return [(si, bi) for si, d in enumerate(arch.depths) for bi in range(d)]


def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d) -> None:
    out, cin, k = dst.weight.shape[0], dst.weight.shape[1], dst.kernel_size[0]
    lo = (src.kernel_size[0] - k) // 2
    w = src.weight[:out] if dst.groups > 1 else src.weight[:out, :cin]
    dst.weight.copy_(w[:, :, lo:lo + k, lo:lo + k])
    if dst.bias is not None:
        dst.bias.copy_(src.bias[:out])


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    c = dst.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
