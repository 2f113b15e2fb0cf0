"""Tokens-to-Token ViT (T2T-ViT-7/10/12/14) with the Performer T2T module.

Paper: Li Yuan, Yunpeng Chen, Tao Wang, Weihao Yu, Yujun Shi, Zi-Hang Jiang, Francis E.H. Tay,
Jiashi Feng, Shuicheng Yan, "Tokens-to-Token ViT: Training Vision Transformers from Scratch on
ImageNet", ICCV 2021, arXiv:2101.11986.
Facts read from the official repository https://github.com/yitu-opensource/T2T-ViT
(models/t2t_vit.py, token_performer.py, transformer_block.py): soft splits 7x7/4 (pad 2) then
3x3/2 (pad 1) twice; two single-head Performer layers of width 64 with random-feature ratio 0.5;
a linear projection to the backbone width; class token plus fixed sinusoidal position table;
backbone widths/depths/heads/MLP ratios (7/10/12: 256 wide, 4 heads, ratio 2; 14: 384 wide,
6 heads, ratio 3); no qkv bias. This file is our own implementation.

T2T module: an image is "softly split" into overlapping patches (unfold), each patch a token; a
token layer mixes them; the tokens are folded back into a map and split again, shrinking the
sequence 4x then 2x then 2x (224 -> 14x14 tokens).

Performer token layer (single head, m = 0.5 * d random features w, orthogonal, fixed):
    phi(x) = exp(w x - |x|^2 / 2) / sqrt(m);  y = phi(q) (phi(k)^T v) / (phi(q) sum_t phi(k_t))
    out = v + proj(y);  out = out + MLP(LN(out))            (v is the skip, as in the paper's code)

Ours / open details:
- The random features ``w`` and the sinusoidal table are persistent buffers (fixed, saved with
  the weights, not trained); the official code keeps them as frozen parameters. Parameter counts
  here therefore exclude them (54.5K for T2T-ViT-7, 79.7K for T2T-ViT-14).
- Non-square inputs work: the token grid is tracked instead of taking a square root, and the
  sinusoidal table is regenerated for other sequence lengths.
- The backbone block is timm's ViT ``Block`` (pre-norm, GELU MLP), which is the same layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block

from slimkit.zoo._common import ClassifierMixin, build_variant, init_linear_trunc_normal, linear_head, zoo_cfg

__all__ = ["T2TViT", "PerformerTokenLayer", "T2TModule", "sinusoid_table"]


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """The fixed (1, length, dim) sin/cos position table of "Attention is all you need"."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(dim) // 2) / dim).double()
    angle = pos / rate
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


class PerformerTokenLayer(nn.Module):
    """Single-head linear attention with positive random features, then an MLP (dim_in -> dim)."""

    def __init__(self, dim_in: int, dim: int, kernel_ratio: float = 0.5, drop: float = 0.1):
        super().__init__()
        self.dim = dim
        self.num_features_rf = int(dim * kernel_ratio)
        self.norm1 = nn.LayerNorm(dim_in)
        self.kqv = nn.Linear(dim_in, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.Dropout(drop))
        w = nn.init.orthogonal_(torch.empty(self.num_features_rf, dim)) * math.sqrt(self.num_features_rf)
        self.register_buffer("w", w)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, d) -> (B, T, m): exp(w.x - |x|^2/2) / sqrt(m)
        half_norm = (x * x).sum(dim=-1, keepdim=True) / 2
        return torch.exp(x @ self.w.t() - half_norm) / math.sqrt(self.num_features_rf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.dim, dim=-1)
        kp, qp = self._features(k), self._features(q)
        denom = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1)
        kv = kp.transpose(1, 2) @ v  # (B, m, d)
        y = (qp @ kv) / (denom + 1e-8)
        x = v + self.proj_drop(self.proj(y))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Soft split (7x7/4) -> token layer -> soft split (3x3/2) -> token layer -> soft split -> project."""

    def __init__(self, in_chans: int, embed_dim: int, token_dim: int = 64):
        super().__init__()
        self.token1 = PerformerTokenLayer(in_chans * 7 * 7, token_dim)
        self.token2 = PerformerTokenLayer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    @staticmethod
    def _split(x: torch.Tensor, kernel: int, stride: int, pad: int) -> tuple[torch.Tensor, tuple[int, int]]:
        h = (x.shape[2] + 2 * pad - kernel) // stride + 1
        w = (x.shape[3] + 2 * pad - kernel) // stride + 1
        return F.unfold(x, kernel, padding=pad, stride=stride).transpose(1, 2), (h, w)

    @staticmethod
    def _fold(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, hw = self._split(x, 7, 4, 2)
        x, hw = self._split(self._fold(self.token1(x), hw), 3, 2, 1)
        x, hw = self._split(self._fold(self.token2(x), hw), 3, 2, 1)
        return self.project(x), hw


class T2TViT(ClassifierMixin, nn.Module):
    """T2T-ViT classifier (timm interface: forward_features / forward_head / reset_classifier)."""

    head_in_attr = "embed_dim"

    def __init__(
        self,
        img_size: int = 224,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        token_dim: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(in_chans, embed_dim, token_dim)
        side = img_size // 16
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sinusoid_table(side * side + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=False, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=dpr[i])
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dim, num_classes)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_trunc_normal)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = self.pos_embed
        if pos.shape[1] != x.shape[1]:
            pos = sinusoid_table(x.shape[1], self.embed_dim).to(x)
        x = self.pos_drop(x + pos)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def _cfg() -> dict[str, Any]:
    return zoo_cfg("tokens_to_token.project", crop_pct=0.9, interpolation="bicubic", paper_ids="arXiv:2101.11986")


# name -> (width, depth, heads, mlp ratio)
_VARIANTS = {
    "t2t_vit_7": (256, 7, 4, 2.0),
    "t2t_vit_10": (256, 10, 4, 2.0),
    "t2t_vit_12": (256, 12, 4, 2.0),
    "t2t_vit_14": (384, 14, 6, 3.0),
}

default_cfgs = generate_default_cfgs({name: _cfg() for name in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> T2TViT:
    dim, depth, heads, mlp = _VARIANTS[variant]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp)
    return build_variant(T2TViT, variant, pretrained, args, kwargs)


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-7 (paper: 4.3M params, 1.1G MACs at 224)."""
    return _create("t2t_vit_7", pretrained, **kwargs)


@register_model
def t2t_vit_10(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-10 (paper: 5.9M params, 1.5G MACs at 224)."""
    return _create("t2t_vit_10", pretrained, **kwargs)


@register_model
def t2t_vit_12(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-12 (paper: 6.9M params, 1.8G MACs at 224)."""
    return _create("t2t_vit_12", pretrained, **kwargs)


@register_model
def t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14 (paper: 21.5M params, 4.8G MACs at 224)."""
    return _create("t2t_vit_14", pretrained, **kwargs)
