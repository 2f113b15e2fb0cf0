"""EMOv2: hierarchical efficient models built from i2RMB blocks (EMOv2-1M/2M/5M).

Paper: Jiangning Zhang et al., "EMOv2: Pushing 5M Vision Model Frontier", arXiv:2412.06674 (2024).
Facts (stage widths, depths, expansion ratios, head dims, 5x5 depth-wise kernels, window 7, the
"hybrid" near+far window attention used by the released EMOv2 models) are read from the official
repository https://github.com/zhangzjn/EMOv2 (model/lib_emo/emo2.py, the ``*_k5_hybrid`` models).
This file is our own implementation.

i2RMB (Improved Inverted Residual Mobile Block), as built here:

    x -> norm -> mixer (1x1 conv + act, or windowed attention whose V is a 1x1 conv to the
         expanded width) -> depth-wise kxk conv + BN + SiLU (with an inner skip) -> 1x1 projection
      -> layer scale -> + x

The attention sums two window partitions of the same feature map: "close" windows (contiguous
7x7 patches) and "remote" windows (7x7 tokens taken with a stride of H/7, i.e. a dilated grid),
so every token sees its neighbourhood and a sparse global sample.

Details that are ours (the paper leaves them open or we chose differently on purpose):
- Maps whose side is not a multiple of the window are zero-padded on the right/bottom before the
  projections and cropped after, as the official code does; padded tokens are not masked.
- The first block of every stage (stride 2, no skip) still multiplies its output by the layer
  scale, as the official code does; we keep it so parameter counts and behaviour match.
- ``fused_attn`` (default from timm) selects torch's fused SDPA; the plain-matmul path gives the
  same numbers and is what fvcore-style counters can see.
- ``forward_features`` includes the final LayerNorm; ``forward_head`` pools, drops and classifies.

Counting: the paper's FLOPs come from fvcore (``FlopCountAnalysis``), which counts one per
multiply-accumulate of conv/linear/matmul and also adds norm and pooling work; see the README zoo section.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, LayerScale2d, use_fused_attn
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_linear_trunc_normal, linear_head, zoo_cfg

__all__ = ["EMOv2", "I2RMB", "HybridWindowAttention"]


def _partition(x: torch.Tensor, win: int, remote: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B * windows, win*win, C); H and W must be multiples of `win`."""
    b, c, h, w = x.shape
    n1, n2 = h // win, w // win
    if remote:  # token (i, j) of window (a, b) sits at row i*n1 + a: a dilated grid
        x = x.view(b, c, win, n1, win, n2).permute(0, 3, 5, 2, 4, 1)
    else:  # contiguous windows
        x = x.view(b, c, n1, win, n2, win).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b * n1 * n2, win * win, c)


def _unpartition(x: torch.Tensor, win: int, remote: bool, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `_partition`: (B * windows, win*win, C) -> (B, C, H, W)."""
    n1, n2, c = h // win, w // win, x.shape[-1]
    x = x.view(b, n1, n2, win, win, c)
    if remote:
        return x.permute(0, 5, 3, 1, 4, 2).reshape(b, c, h, w)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class HybridWindowAttention(nn.Module):
    """Sum of close-window and remote-window attention; V is expanded to `dim_mid` channels."""

    def __init__(self, dim_in: int, dim_mid: int, head_dim: int, window: int, act_layer: type[nn.Module]):
        super().__init__()
        self.num_heads = max(1, dim_in // head_dim)
        self.head_dim = dim_in // self.num_heads
        self.window = window
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qk = nn.Conv2d(dim_in, dim_in * 2, 1, bias=True)
        self.v = nn.Sequential(nn.Conv2d(dim_in, dim_mid, 1, bias=True), act_layer())

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k: (N, L, C_qk); v: (N, L, C_v) -> (N, L, C_v), heads split inside
        n, length, _ = q.shape
        q = q.view(n, length, self.num_heads, -1).transpose(1, 2)
        k = k.view(n, length, self.num_heads, -1).transpose(1, 2)
        v = v.view(n, length, self.num_heads, -1).transpose(1, 2)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return out.transpose(1, 2).reshape(n, length, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        win = self.window if self.window > 0 else max(h, w)
        pad_h, pad_w = (-h) % win, (-w) % win
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        q, k = self.qk(x).chunk(2, dim=1)
        v = self.v(x)
        out = 0
        for remote in (False, True):
            part = partial(_partition, win=win, remote=remote)
            y = self._attend(part(q), part(k), part(v))
            out = out + _unpartition(y, win, remote, b, hp, wp)
        return out[:, :, :h, :w]


class I2RMB(nn.Module):
    """Improved inverted residual mobile block (see the module docstring)."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        exp_ratio: float,
        norm_layer: type[nn.Module],
        act_layer: type[nn.Module],
        dw_kernel: int = 5,
        stride: int = 1,
        attention: bool = False,
        head_dim: int = 32,
        window: int = 7,
        drop_path: float = 0.0,
        ls_init: float = 1e-6,
    ):
        super().__init__()
        dim_mid = int(dim_in * exp_ratio)
        self.has_skip = dim_in == dim_out and stride == 1
        self.norm = norm_layer(dim_in)
        if attention:
            self.mixer = HybridWindowAttention(dim_in, dim_mid, head_dim, window, act_layer)
        else:
            self.mixer = nn.Sequential(nn.Conv2d(dim_in, dim_mid, 1, bias=True), act_layer())
        self.local = nn.Sequential(
            nn.Conv2d(dim_mid, dim_mid, dw_kernel, stride, dw_kernel // 2, groups=dim_mid, bias=False),
            nn.BatchNorm2d(dim_mid, eps=1e-6),
            nn.SiLU(),
        )
        self.proj = nn.Conv2d(dim_mid, dim_out, 1, bias=False)
        self.ls = LayerScale2d(dim_out, ls_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.mixer(self.norm(x))
        local = self.local(x)
        x = self.ls(self.proj(x + local if self.has_skip else local))
        return shortcut + self.drop_path(x) if self.has_skip else x


def _norm(kind: str) -> type[nn.Module]:
    return partial(nn.BatchNorm2d, eps=1e-6) if kind == "bn" else partial(LayerNorm2d, eps=1e-6)


class EMOv2(ClassifierMixin, nn.Module):
    """EMOv2 classifier (timm interface: forward_features / forward_head / reset_classifier)."""

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        embed_dims: tuple[int, ...] = (48, 72, 160, 288),
        exp_ratios: tuple[float, ...] = (2.0, 3.0, 4.0, 4.0),
        head_dims: tuple[int, ...] = (16, 24, 32, 32),
        norms: tuple[str, ...] = ("bn", "bn", "ln", "ln"),
        acts: tuple[str, ...] = ("silu", "silu", "gelu", "gelu"),
        attn_stages: tuple[bool, ...] = (False, False, True, True),
        dw_kernel: int = 5,
        window: int = 7,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ls_init: float = 1e-6,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        stem_dim = embed_dims[0] // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_dim, 3, 2, 1, bias=True), nn.BatchNorm2d(stem_dim, eps=1e-6), nn.SiLU(),
            nn.Conv2d(stem_dim, stem_dim, 3, 1, 1, groups=stem_dim, bias=False),
            nn.BatchNorm2d(stem_dim, eps=1e-6), nn.SiLU(),
            nn.Conv2d(stem_dim, stem_dim, 1, bias=False),
        )
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        acts_map = {"silu": nn.SiLU, "gelu": nn.GELU}
        stages, dim, idx = [], stem_dim, 0
        self.feature_info = [dict(num_chs=stem_dim, reduction=2, module="stem.6")]
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                first = j == 0  # the down-sampling block: plain conv mixer, doubled expansion
                blocks.append(I2RMB(
                    dim, embed_dims[i], exp_ratios[i] * (2 if first else 1), _norm(norms[i]), acts_map[acts[i]],
                    dw_kernel=dw_kernel, stride=2 if first else 1, attention=attn_stages[i] and not first,
                    head_dim=head_dims[i], window=window, drop_path=dpr[idx], ls_init=ls_init,
                ))
                dim, idx = embed_dims[i], idx + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = _norm(norms[-1])(dim)
        self.num_features = self.head_hidden_size = dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(dim, num_classes)
        self.apply(init_linear_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def _cfg() -> dict[str, Any]:
    return zoo_cfg("stem.0", pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic", paper_ids="arXiv:2412.06674")


default_cfgs = generate_default_cfgs({"emov2_1m": _cfg(), "emov2_2m": _cfg(), "emov2_5m": _cfg()})

# Stage widths/depths/ratios/head dims of the official EMO2_{1M,2M,5M}_k5_hybrid models.
_ARCHS: dict[str, dict[str, Any]] = {
    "emov2_1m": dict(depths=(2, 2, 8, 3), embed_dims=(32, 48, 80, 180), exp_ratios=(2.0, 2.5, 3.0, 3.5),
                     head_dims=(16, 16, 20, 20), drop_path_rate=0.04036),
    "emov2_2m": dict(depths=(3, 3, 9, 3), embed_dims=(32, 48, 120, 200), exp_ratios=(2.0, 2.5, 3.0, 3.5),
                     head_dims=(16, 16, 20, 20), drop_path_rate=0.05),
    "emov2_5m": dict(depths=(3, 3, 9, 3), embed_dims=(48, 72, 160, 288), exp_ratios=(2.0, 3.0, 4.0, 4.0),
                     head_dims=(16, 24, 32, 32), drop_path_rate=0.05),
}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> EMOv2:
    return build_variant(EMOv2, variant, pretrained, _ARCHS[variant], kwargs, feature_cfg=dict(flatten_sequential=True))


@register_model
def emov2_1m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    """EMOv2-1M (paper: 1.4M params, 285M FLOPs at 224)."""
    return _create("emov2_1m", pretrained, **kwargs)


@register_model
def emov2_2m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    """EMOv2-2M (paper: 2.3M params, 487M FLOPs at 224)."""
    return _create("emov2_2m", pretrained, **kwargs)


@register_model
def emov2_5m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    """EMOv2-5M (paper: 5.1M params, 1035M FLOPs at 224)."""
    return _create("emov2_5m", pretrained, **kwargs)
