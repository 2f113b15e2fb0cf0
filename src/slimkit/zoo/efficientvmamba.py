"""EfficientVMamba: atrous selective scan + conv branch in the early stages, MBConv in the late ones.

Paper: X. Pei, T. Huang, C. Xu, "EfficientVMamba: Atrous Selective Scan for Light Weight Visual
Mamba", AAAI 2025 (arXiv 2403.09977).  Facts come from the paper and the authors' repository
(TerryPei/EfficientVMamba), including the model printouts in its training logs, which fix the
released widths: T = (48, 96, 192, 384), S = (64, 128, 256, 512), B = (96, 192, 384, 768) with
depths (2, 2, 4, 2) / (2, 2, 4, 2) / (2, 2, 9, 2); stages 1-2 are EVSS blocks (efficient 2D scan
with skip sampling, d_state 16, expansion 2, no MLP, a dw-conv branch, both branches re-weighted by
one shared channel-attention module), stages 3-4 are inverted residuals (expansion 4, SE 0.125,
ReLU); patch embed 4x4/4 + LayerNorm; Swin-style patch merging.  The code here is our own.

Atrous selective scan (ES2D): the map is split into the four stride-2 sub-grids; (even, even)
and (even, odd) are scanned row by row, (odd, even) and (odd, odd) column by column, each with its
own projections, then written back in place.  The scan runs in pure PyTorch
(:mod:`slimkit.zoo._selective_scan`) and exports to ONNX.  MAC counting: slimkit's counter sees
the conv/linear/einsum work; the scan's elementwise work is what the paper adds as
9*L*D*N + L*D per scan (fvcore + the repository's handler), reported separately in the docs.

Ours where the paper is silent: the channel attention is applied before the drop path, as in the
repository; odd map sizes are zero padded to even before sub-sampling and cropped after.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_linear_trunc_normal, linear_head, zoo_cfg
from slimkit.zoo._selective_scan import selective_scan

__all__ = ["PAPER_TABLE", "EfficientVMamba", "ES2D", "EVSSBlock"]


def _linspace(stop: float, n: int) -> list[float]:
    """Stochastic-depth rates 0..stop (plain Python, so models also build on the meta device)."""
    return [stop * i / max(n - 1, 1) for i in range(n)]


def atrous_split(x: torch.Tensor) -> torch.Tensor:
    """(b, c, H, W) -> (b, 4, c, H/2 * W/2): the four stride-2 sub-grids in their scan order."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, w % 2, 0, h % 2))
    xt = x.transpose(2, 3)
    grids = [x[:, :, 0::2, 0::2], xt[:, :, 0::2, 1::2], x[:, :, 0::2, 1::2], xt[:, :, 1::2, 1::2]]
    return torch.stack([g.flatten(2) for g in grids], dim=1)


def atrous_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`atrous_split`: (b, 4, c, L/4) -> (b, c, h, w)."""
    b, _, c, _ = ys.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    ee = ys[:, 0].view(b, c, h2, w2)
    oe = ys[:, 1].view(b, c, w2, h2).transpose(2, 3)
    eo = ys[:, 2].view(b, c, h2, w2)
    oo = ys[:, 3].view(b, c, w2, h2).transpose(2, 3)
    even = torch.stack([ee, eo], dim=-1).reshape(b, c, h2, 2 * w2)
    odd = torch.stack([oe, oo], dim=-1).reshape(b, c, h2, 2 * w2)
    return torch.stack([even, odd], dim=3).reshape(b, c, 2 * h2, 2 * w2)[:, :, :h, :w]


class ES2D(nn.Module):
    """Efficient 2D selective scan block: in-proj, dw conv, atrous 4-way scan, gate, out-proj."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 3) -> None:
        super().__init__()
        inner, self.k, self.d_state = int(expand * dim), 4, d_state
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, d_conv, 1, d_conv // 2, groups=inner)
        self.x_proj_weight = nn.Parameter(torch.empty(self.k, self.dt_rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(self.k, inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(self.k, inner))
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.k * inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(self.k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self._init_ssm(inner)

    def _init_ssm(self, inner: int) -> None:
        """Standard Mamba init: dt ~ log-uniform[1e-3, 0.1] through an inverse softplus bias."""
        nn.init.uniform_(self.x_proj_weight, -(inner**-0.5), inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.k, inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        with torch.no_grad():
            self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        xs = atrous_split(x)  # (b, 4, d, l)
        length = xs.shape[-1]
        xs = xs.reshape(b, self.k * d, length)
        proj = F.conv1d(xs, self.x_proj_weight.reshape(-1, d, 1), groups=self.k)
        dts, bs, cs = proj.view(b, self.k, -1, length).split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = F.conv1d(dts.reshape(b, -1, length), self.dt_projs_weight.reshape(-1, self.dt_rank, 1), groups=self.k)
        ys = selective_scan(xs, dts, -torch.exp(self.A_logs), bs, cs, self.Ds, self.dt_projs_bias.reshape(-1))
        return atrous_merge(ys.view(b, self.k, d, length), h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # channels last (b, h, w, c)
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.permute(0, 3, 1, 2)))
        y = self.out_norm(self.scan(x).permute(0, 2, 3, 1))
        return self.out_proj(y * F.silu(z))


class ChannelAttention(nn.Module):
    """The repository's BiAttn (channel part only): LN, global mean, bottleneck MLP, sigmoid gate."""

    def __init__(self, dim: int, ratio: float = 0.125) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.reduce = nn.Linear(dim, hidden)
        self.select = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # channels last
        g = self.norm(x).mean((1, 2), keepdim=True)
        return x * torch.sigmoid(self.select(F.gelu(self.reduce(g))))


class EVSSBlock(nn.Module):
    """x + DropPath(attn(ES2D(LN x)) + attn(conv(LN x))), channels last."""

    def __init__(self, dim: int, d_state: int = 16, expand: float = 2.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ssm = ES2D(dim, d_state, expand)
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU(), nn.Conv2d(dim, dim, 1)
        )
        self.attn = ChannelAttention(dim)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        local = self.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.attn(self.ssm(y)) + self.attn(local))


class PatchMerging2D(nn.Module):
    """2x2 neighbourhood concat, LayerNorm(4C), Linear(4C -> out), channels last."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class MBConv(nn.Module):
    """Inverted residual with SE (ReLU), channels first, as in the repository's late stages."""

    def __init__(self, dim: int, expand: int = 4, se_ratio: float = 0.125, drop_path: float = 0.0) -> None:
        super().__init__()
        mid = dim * expand
        rd = max(1, int(mid * se_ratio))
        self.pw = nn.Sequential(nn.Conv2d(dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        )
        self.se_reduce, self.se_expand = nn.Conv2d(mid, rd, 1), nn.Conv2d(rd, mid, 1)
        self.pw2 = nn.Sequential(nn.Conv2d(mid, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.pw(x))
        y = y * torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return x + self.drop_path(self.pw2(y))


class _Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module], down: nn.Module, channels_last: bool) -> None:
        super().__init__()
        self.blocks, self.downsample, self.channels_last = nn.Sequential(*blocks), down, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # in/out channels last
        if self.channels_last:
            return self.downsample(self.blocks(x))
        x = self.blocks(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.downsample(x)


class EfficientVMamba(ClassifierMixin, nn.Module):
    """EfficientVMamba (timm interface); forward_features returns (b, c, h, w)."""

    def __init__(
        self,
        dims: tuple[int, ...] = (48, 96, 192, 384),
        depths: tuple[int, ...] = (2, 2, 4, 2),
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.patch_embed = nn.Conv2d(in_chans, dims[0], 4, 4)
        self.embed_norm = nn.LayerNorm(dims[0])
        dpr = _linspace(drop_path_rate, sum(depths))
        stages = []
        for i, (dim, _n) in enumerate(zip(dims, depths)):
            rates = dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            if i < 2:
                blocks = [EVSSBlock(dim, d_state, ssm_ratio, r) for r in rates]
            else:
                blocks = [MBConv(dim, drop_path=r) for r in rates]
            down = PatchMerging2D(dim, dims[i + 1]) if i < len(dims) - 1 else nn.Identity()
            stages.append(_Stage(blocks, down, channels_last=i < 2))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(dims[-1])
        self.head = linear_head(dims[-1], num_classes)
        self.apply(partial(init_linear_trunc_normal, norms=(nn.LayerNorm,)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        return self.norm(self.stages(x)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        if pre_logits:
            return x
        return self.head(F.dropout(x, self.drop_rate, self.training))


def _cfg() -> dict:
    return zoo_cfg("patch_embed", url="", pool_size=(7, 7))


_VARIANTS = {
    "efficientvmamba_t": dict(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2)),
    "efficientvmamba_s": dict(dims=(64, 128, 256, 512), depths=(2, 2, 4, 2)),
    "efficientvmamba_b": dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2)),
}
#: The paper's ImageNet table (Pei et al., AAAI 2025; same in the repository README), plus the
#: exact parameter counts printed in the repository's training logs (log_efficient_vmamba_*.txt)
#: and the one FLOPs figure logged there (S: 1.343G).  The paper's FLOPs are fvcore counts
#: (LayerNorm 5 and eval BatchNorm 2 per element) plus 9*L*D*N + L*D per selective scan.
PAPER_TABLE = {
    "efficientvmamba_t": {"params": "6M", "macs": "0.8G", "params_repo": "6.494M"},
    "efficientvmamba_s": {"params": "11M", "macs": "1.3G", "params_repo": "11.274M", "macs_repo": "1.343G"},
    "efficientvmamba_b": {"params": "33M", "macs": "4.0G", "params_repo": "33.717M"},
}
default_cfgs = generate_default_cfgs({name: _cfg() for name in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs) -> EfficientVMamba:
    return build_variant(EfficientVMamba, variant, pretrained, _VARIANTS[variant], kwargs)


@register_model
def efficientvmamba_t(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-T (6M params, 0.8G FLOPs in the paper)."""
    return _create("efficientvmamba_t", pretrained, **kwargs)


@register_model
def efficientvmamba_s(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-S (11M params, 1.3G FLOPs in the paper)."""
    return _create("efficientvmamba_s", pretrained, **kwargs)


@register_model
def efficientvmamba_b(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-B (33M params, 4.0G FLOPs in the paper)."""
    return _create("efficientvmamba_b", pretrained, **kwargs)
