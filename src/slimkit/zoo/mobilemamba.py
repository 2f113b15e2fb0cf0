"""MobileMamba: a three-stage lightweight visual Mamba with multi-receptive-field mixing.

Paper: H. He, J. Zhang, Y. Cai, H. Chen, X. Hu, Z. Gan, Y. Wang, C. Wang, Y. Wu, L. Xie,
"MobileMamba: Lightweight Multi-Receptive Visual Mamba Network", CVPR 2025.  Facts (the stem of
four stride-2 3x3 convs, the T2/T4/S6/B1/B2/B4 width, depth and resolution table, the MRFFI
split into global/local/identity channels with ratios (0.8, 0.7, 0.6) / (0.2, 0.2, 0.3) and kernels
7/5/3, the WTE-Mamba = bidirectional SS2D with d_state 1 and expansion 2 plus a one-level Haar
wavelet branch, the dw-conv + FFN sandwich around each mixer, the SE patch merging, the BN-Linear
head) come from the paper and the authors' repository (lewandofskee/MobileMamba); the code here is
our own.  B2 and B4 are B1 at 384 and 512 input.

The selective scan runs in pure PyTorch (:mod:`slimkit.zoo._selective_scan`, chunked, no CUDA
kernel) and exports to ONNX.  MAC counting: conv/linear MACs are counted by slimkit's counter; the
scan itself is elementwise work that the paper's fvcore count adds as 9*L*D*N + L*D per scan
(see ``scan_flops``), reported separately in the README zoo section.

Ours where the paper is silent: the Haar filters are fixed buffers (the repository stores them as
frozen parameters, so its parameter count includes 32*C extra numbers per WTE-Mamba); the
"distillation" head variants (the dagger rows of the paper) are the same architectures and are not
registered separately.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, SqueezeExcite
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_linear_trunc_normal, linear_head, zoo_cfg
from slimkit.zoo._selective_scan import selective_scan

__all__ = ["PAPER_TABLE", "MobileMamba", "WTEMamba", "BiSS2D"]


def _linspace(stop: float, n: int) -> list[float]:
    """Stochastic-depth rates 0..stop (plain Python, so models also build on the meta device)."""
    return [stop * i / max(n - 1, 1) for i in range(n)]


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, optionally with the BN scale initialised to 0."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, bn_init: float = 1.0):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))
        nn.init.constant_(self[1].weight, bn_init)


class Residual(nn.Module):
    """x + m(x)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


def _ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(ConvBN(dim, 2 * dim), nn.ReLU(), ConvBN(2 * dim, dim, bn_init=0.0))


def _dw_ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(Residual(ConvBN(dim, dim, 3, groups=dim, bn_init=0.0)), Residual(_ffn(dim)))


class BiSS2D(nn.Module):
    """SS2D with one forward and one backward raster scan (K=2), channels first."""

    def __init__(self, dim: int, d_state: int = 1, expand: float = 2.0, d_conv: int = 3) -> None:
        super().__init__()
        inner, self.k, self.d_state = int(expand * dim), 2, d_state
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = ConvBN(dim, 2 * inner)
        self.conv = nn.Conv2d(inner, inner, d_conv, 1, d_conv // 2, groups=inner)
        self.x_proj_weight = nn.Parameter(torch.empty(self.k, self.dt_rank + 2 * d_state, inner))
        self.dt_projs_weight = nn.Parameter(0.1 * torch.rand(self.k, inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(0.1 * torch.rand(self.k, inner))
        self.A_logs = nn.Parameter(torch.zeros(self.k * inner, d_state))  # A = -1 at init
        self.Ds = nn.Parameter(torch.ones(self.k * inner))
        self.out_norm = LayerNorm2d(inner)
        self.out_proj = ConvBN(inner, dim)
        nn.init.uniform_(self.x_proj_weight, -(inner**-0.5), inner**-0.5)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        seq = x.flatten(2)
        xs = torch.stack([seq, seq.flip(-1)], dim=1).reshape(b, self.k * d, h * w)
        proj = F.conv1d(xs, self.x_proj_weight.reshape(-1, d, 1), groups=self.k)
        dts, bs, cs = proj.view(b, self.k, -1, h * w).split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = F.conv1d(dts.reshape(b, -1, h * w), self.dt_projs_weight.reshape(-1, self.dt_rank, 1), groups=self.k)
        ys = selective_scan(xs, dts, -torch.exp(self.A_logs), bs, cs, self.Ds, self.dt_projs_bias.reshape(-1))
        ys = ys.view(b, self.k, d, h * w)
        return (ys[:, 0] + ys[:, 1].flip(-1)).view(b, d, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=1)
        x = F.silu(self.conv(x))
        y = self.out_norm(self.scan(x)) * F.silu(z)
        return self.out_proj(y)


def _haar_filters(channels: int) -> torch.Tensor:
    """Orthonormal 2x2 Haar analysis filters (LL, LH, HL, HH) repeated per channel: (4C, 1, 2, 2)."""
    lo = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    hi = torch.tensor([1.0, -1.0]) / math.sqrt(2)
    bank = torch.stack([torch.outer(a, b) for a in (lo, hi) for b in (lo, hi)])
    return bank[:, None].repeat(channels, 1, 1, 1)


class WTEMamba(nn.Module):
    """Long-range WTE-Mamba: scaled BiSS2D + a Haar-wavelet branch with a dw conv per sub-band."""

    def __init__(self, dim: int, kernel: int, expand: float = 2.0) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("haar", _haar_filters(dim), persistent=False)
        self.ssm = BiSS2D(dim, d_state=1, expand=expand)
        self.ssm_scale = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.band_conv = nn.Conv2d(4 * dim, 4 * dim, kernel, 1, kernel // 2, groups=4 * dim, bias=False)
        self.band_scale = nn.Parameter(torch.full((1, 4 * dim, 1, 1), 0.1))

    def wavelet(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, w % 2, 0, h % 2))
        bands = F.conv2d(padded, self.haar, stride=2, groups=self.dim)
        bands = self.band_scale * self.band_conv(bands)
        return F.conv_transpose2d(bands, self.haar, stride=2, groups=self.dim)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssm_scale * self.ssm(x) + self.wavelet(x)


def _round16(n: int) -> int:
    lower = n // 16 * 16
    return lower if n - lower < lower + 16 - n else lower + 16


class MRFFI(nn.Module):
    """Multi-receptive field feature interaction: global (WTE-Mamba) | local (MK-DeConv) | identity."""

    def __init__(self, dim: int, global_ratio: float, local_ratio: float, kernel: int, expand: float) -> None:
        super().__init__()
        self.global_ch = _round16(int(global_ratio * dim))
        local = int(local_ratio * dim)
        self.local_ch = dim - self.global_ch if self.global_ch + local > dim else local
        self.split = [self.global_ch, self.local_ch, dim - self.global_ch - self.local_ch]
        self.global_op = WTEMamba(self.global_ch, kernel, expand) if self.global_ch else nn.Identity()
        lc = self.local_ch
        self.local_op = (
            nn.Sequential(ConvBN(lc, lc, kernel, groups=lc), nn.ReLU(), ConvBN(lc, lc, 1, groups=lc))
            if lc
            else nn.Identity()
        )
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(dim, dim, bn_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, loc, ident = torch.split(x, self.split, dim=1)
        return self.proj(torch.cat([self.global_op(g), self.local_op(loc), ident], dim=1))


class MobileMambaBlock(nn.Module):
    """dw-conv, FFN, MRFFI, dw-conv, FFN (each residual), plus an outer residual."""

    def __init__(self, dim: int, gr: float, lr: float, kernel: int, expand: float, drop_path: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            *_dw_ffn(dim), Residual(MRFFI(dim, gr, lr, kernel, expand)), *_dw_ffn(dim)
        )
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.body(x))


class PatchMerging(nn.Sequential):
    """Stride-2 downsampling: 1x1 expand x4, dw 3x3/2, SE, 1x1 project."""

    def __init__(self, dim: int, out_dim: int) -> None:
        hid = 4 * dim
        super().__init__(
            ConvBN(dim, hid), nn.ReLU(), ConvBN(hid, hid, 3, 2, groups=hid), nn.ReLU(),
            SqueezeExcite(hid, 0.25), ConvBN(hid, out_dim),
        )  # fmt: skip


class MobileMamba(ClassifierMixin, nn.Module):
    """MobileMamba (timm interface)."""

    def __init__(
        self,
        embed_dim: tuple[int, int, int] = (192, 384, 448),
        depth: tuple[int, int, int] = (1, 2, 2),
        global_ratio: tuple[float, ...] = (0.8, 0.7, 0.6),
        local_ratio: tuple[float, ...] = (0.2, 0.2, 0.3),
        kernels: tuple[int, ...] = (7, 5, 3),
        ssm_ratio: float = 2.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        e0 = embed_dim[0]
        self.patch_embed = nn.Sequential(
            ConvBN(in_chans, e0 // 8, 3, 2), nn.ReLU(), ConvBN(e0 // 8, e0 // 4, 3, 2), nn.ReLU(),
            ConvBN(e0 // 4, e0 // 2, 3, 2), nn.ReLU(), ConvBN(e0 // 2, e0, 3, 2),
        )  # fmt: skip
        dpr = _linspace(drop_path_rate, sum(depth))
        stages = []
        for i, (dim, n) in enumerate(zip(embed_dim, depth)):
            blocks = []
            if i > 0:  # downsampling between stages
                blocks += [_dw_ffn(embed_dim[i - 1]), PatchMerging(embed_dim[i - 1], dim), _dw_ffn(dim)]
            for j in range(n):
                args = (dim, global_ratio[i], local_ratio[i], kernels[i], ssm_ratio, dpr[sum(depth[:i]) + j])
                blocks.append(MobileMambaBlock(*args))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.head_norm = nn.BatchNorm1d(self.num_features)
        self.head = linear_head(self.num_features, num_classes)
        init_linear_trunc_normal(self.head)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        init_linear_trunc_normal(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_norm(x.mean((2, 3)))
        if pre_logits:
            return x
        return self.head(F.dropout(x, self.drop_rate, self.training))


def _cfg(size: int) -> dict:
    return zoo_cfg("patch_embed.0.0", url="", input_size=(3, size, size), pool_size=(size // 64, size // 64))


_B = dict(embed_dim=(200, 376, 448), depth=(2, 3, 2))
_VARIANTS = {  # name: (input size, architecture)
    "mobilemamba_t2": (192, dict(embed_dim=(144, 272, 368), depth=(1, 2, 2))),
    "mobilemamba_t4": (192, dict(embed_dim=(176, 368, 448), depth=(1, 2, 2))),
    "mobilemamba_s6": (224, dict(embed_dim=(192, 384, 448), depth=(1, 2, 2))),
    "mobilemamba_b1": (256, _B),
    "mobilemamba_b2": (384, _B),
    "mobilemamba_b4": (512, _B),
}
#: The paper's ImageNet table (He et al., CVPR 2025; same numbers in the repository README).
#: FLOPs there: fvcore on the BN-fused model plus 9*L*D*N + L*D per selective scan.
PAPER_TABLE = {
    "mobilemamba_t2": {"params": "8.8M", "macs": "255M"},
    "mobilemamba_t4": {"params": "14.2M", "macs": "413M"},
    "mobilemamba_s6": {"params": "15.0M", "macs": "652M"},
    "mobilemamba_b1": {"params": "17.1M", "macs": "1080M"},
    "mobilemamba_b2": {"params": "17.1M", "macs": "2427M"},
    "mobilemamba_b4": {"params": "17.1M", "macs": "4313M"},
}
default_cfgs = generate_default_cfgs({name: _cfg(size) for name, (size, _) in _VARIANTS.items()})


def _create(variant: str, pretrained: bool, **kwargs) -> MobileMamba:
    return build_variant(MobileMamba, variant, pretrained, _VARIANTS[variant][1], kwargs)


@register_model
def mobilemamba_t2(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-T2 at 192x192."""
    return _create("mobilemamba_t2", pretrained, **kwargs)


@register_model
def mobilemamba_t4(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-T4 at 192x192."""
    return _create("mobilemamba_t4", pretrained, **kwargs)


@register_model
def mobilemamba_s6(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-S6 at 224x224."""
    return _create("mobilemamba_s6", pretrained, **kwargs)


@register_model
def mobilemamba_b1(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-B1 at 256x256."""
    return _create("mobilemamba_b1", pretrained, **kwargs)


@register_model
def mobilemamba_b2(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-B2: B1 at 384x384."""
    return _create("mobilemamba_b2", pretrained, **kwargs)


@register_model
def mobilemamba_b4(pretrained: bool = False, **kwargs) -> MobileMamba:
    """MobileMamba-B4: B1 at 512x512."""
    return _create("mobilemamba_b4", pretrained, **kwargs)
