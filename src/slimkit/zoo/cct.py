"""Compact Convolutional Transformer (CCT): conv tokenizer + transformer encoder + sequence pooling.

Paper: Ali Hassani, Steven Walton, Nikhil Shah, Abulikemu Abuduweili, Jiachen Li, Humphrey Shi,
"Escaping the Big Data Paradigm with Compact Transformers", arXiv:2104.05704.
Variant table (layers, heads, MLP ratio, width, tokenizer kernel and depth), tokenizer strides
(``max(1, k//2 - 1)``), padding (``max(1, k//2)``), the 64-channel inner tokenizer width, and the
encoder layer's norm placement are read from the official repository
https://github.com/SHI-Labs/Compact-Transformers (src/cct.py, src/utils/). Our own implementation.

Naming follows the paper: ``cct_L_KxC_R`` = L encoder layers, C tokenizer convs of kernel K,
input resolution R. CIFAR variants default to 10 classes, the 224 variant to 1000.

Architecture notes:
- Tokenizer: C x [conv KxK (no bias) -> ReLU -> 3x3/2 max pool]; every inner conv has 64 channels.
- Encoder layer (as in the official code): ``x = x + attn(LN(x)); x = LN(x); x = x + mlp(x)``,
  i.e. a pre-norm attention followed by a norm on the residual stream before the MLP.
- Sequence pooling: softmax(Linear(d, 1)) over tokens weights the token average; no class token.

Ours / open details:
- Only the learnable positional embedding is provided (the paper's main setting); for an input
  size other than the configured one it is bilinearly resampled on the token grid, so the model
  runs on any size (used by the small-input tests).
- Dropout defaults follow the official classes: attention dropout 0.1, stochastic depth 0.1,
  no embedding/MLP dropout (``drop_rate`` sets the latter).

Counting: the paper's MACs leave out the two attention matmuls (QK^T and AV): CCT-7/3x1 at 32x32
is 0.947G counted that way and 1.18G with them; see the README zoo section.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_, use_fused_attn
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import (
    CIFAR10_MEAN, CIFAR10_STD, ClassifierMixin, build_variant, init_linear_trunc_normal, linear_head, zoo_cfg,
)

__all__ = ["CCT", "ConvTokenizer", "CCTBlock"]


class ConvTokenizer(nn.Module):
    """Conv -> ReLU -> max-pool, repeated; output tokens (B, H*W, C) and the grid size."""

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, num_convs: int, mid_chans: int = 64):
        super().__init__()
        stride, padding = max(1, kernel // 2 - 1), max(1, kernel // 2)
        widths = [in_chans] + [mid_chans] * (num_convs - 1) + [embed_dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.ReLU(inplace=True),
                       nn.MaxPool2d(3, 2, 1)]
        self.convs = nn.Sequential(*layers)
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.convs(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class CCTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class CCTBlock(nn.Module):
    """Pre-norm attention, then a norm on the residual stream, then the MLP (official order)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = CCTAttention(dim, num_heads, attn_drop, drop)
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim),
                                 nn.Dropout(drop))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path(self.attn(self.pre_norm(x))))
        return x + self.drop_path(self.mlp(x))


class CCT(ClassifierMixin, nn.Module):
    """CCT classifier (timm interface: forward_features / forward_head / reset_classifier)."""

    def __init__(
        self,
        img_size: int = 224,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        num_convs: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.1,
        drop_path_rate: float = 0.1,
        global_pool: str = "seq",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim
        self.tokenizer = ConvTokenizer(in_chans, embed_dim, kernel_size, num_convs)
        with torch.no_grad():
            _, self.grid_size = self.tokenizer(torch.zeros(1, in_chans, img_size, img_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        trunc_normal_(self.pos_embed, std=0.2)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            CCTBlock(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, dpr[i]) for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.attention_pool = nn.Linear(embed_dim, 1)
        self.head = linear_head(embed_dim, num_classes)
        self.apply(init_linear_trunc_normal)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def _resample_pos(self, pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # Bilinear, no antialiasing: exportable to ONNX (timm's resampler uses antialiased bicubic).
        h, w = self.grid_size
        pos = pos.reshape(1, h, w, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.tokenizer(x)
        pos = self.pos_embed
        if grid != self.grid_size:  # a different input size: resample the embedding on the token grid
            pos = self._resample_pos(pos, grid)
        x = self.pos_drop(x + pos)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "seq":
            weights = self.attention_pool(x).softmax(dim=1)  # (B, N, 1): one weight per token
            x = (weights.transpose(1, 2) @ x).squeeze(1)
        elif self.global_pool == "avg":
            x = x.mean(dim=1)
        return x if pre_logits else self.head(x)


# name -> (layers, heads, mlp ratio, width, kernel, tokenizer convs, resolution)
_VARIANTS: dict[str, tuple[int, int, float, int, int, int, int]] = {
    "cct_2_3x2_32": (2, 2, 1.0, 128, 3, 2, 32),
    "cct_4_3x2_32": (4, 2, 1.0, 128, 3, 2, 32),
    "cct_6_3x1_32": (6, 4, 2.0, 256, 3, 1, 32),
    "cct_6_3x2_32": (6, 4, 2.0, 256, 3, 2, 32),
    "cct_7_3x1_32": (7, 4, 2.0, 256, 3, 1, 32),
    "cct_7_3x2_32": (7, 4, 2.0, 256, 3, 2, 32),
    "cct_14_7x2_224": (14, 6, 3.0, 384, 7, 2, 224),
}


def _cfg(res: int) -> dict[str, Any]:
    cifar = res == 32
    data = dict(num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD) if cifar else {}
    return zoo_cfg("tokenizer.convs.0", input_size=(3, res, res), crop_pct=1.0 if cifar else 0.9,
                   interpolation="bicubic", fixed_input_size=False, paper_ids="arXiv:2104.05704", **data)


default_cfgs = generate_default_cfgs({name: _cfg(v[-1]) for name, v in _VARIANTS.items()})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> CCT:
    depth, heads, mlp, dim, kernel, convs, res = _VARIANTS[variant]
    args = dict(img_size=res, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp, kernel_size=kernel,
                num_convs=convs)
    return build_variant(CCT, variant, pretrained, args, kwargs)


@register_model
def cct_2_3x2_32(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-2/3x2 for 32x32 (paper: 0.284M params, 0.033G MACs)."""
    return _create("cct_2_3x2_32", pretrained, **kwargs)


@register_model
def cct_4_3x2_32(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-4/3x2 for 32x32 (paper: 0.482M params, 0.046G MACs)."""
    return _create("cct_4_3x2_32", pretrained, **kwargs)


@register_model
def cct_6_3x1_32(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-6/3x1 for 32x32 (paper: 3.168M params, 0.813G MACs)."""
    return _create("cct_6_3x1_32", pretrained, **kwargs)


@register_model
def cct_6_3x2_32(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-6/3x2 for 32x32 (paper: 3.327M params, 0.241G MACs)."""
    return _create("cct_6_3x2_32", pretrained, **kwargs)


@register_model
def cct_7_3x1_32(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-7/3x1 for 32x32 (paper: 3.760M params, 0.947G MACs)."""
    return _create("cct_7_3x1_32", pretrained, **kwargs)


@register_model
def cct_7_3x2_32(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-7/3x2 for 32x32 (paper: 3.853M params, 0.275G MACs)."""
    return _create("cct_7_3x2_32", pretrained, **kwargs)


@register_model
def cct_14_7x2_224(pretrained: bool = False, **kwargs: Any) -> CCT:
    """CCT-14/7x2 for 224x224 ImageNet (paper: 22.29M params, 5.11G MACs)."""
    return _create("cct_14_7x2_224", pretrained, **kwargs)
