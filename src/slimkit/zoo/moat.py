"""tiny-MOAT-0/1/2/3: alternating mobile convolution (MBConv) and attention.

Paper: Chenglin Yang, Siyuan Qiao, Qihang Yu, Xiaoding Yuan, Yukun Zhu, Alan Yuille, Hartwig Adam,
Liang-Chieh Chen, "MOAT: Alternating Mobile Convolution and Attention Brings Strong Vision
Models", ICLR 2023, arXiv:2210.01820.
Facts read from the official TensorFlow code, https://github.com/google-research/deeplab2
(model/pixel_encoder/moat.py, model/layers/moat_blocks.py, moat_attention.py) and its checkpoint
table (g3doc/projects/moat_imagenet_pretrained_checkpoints.md): stem widths, stage widths and
depths of the tiny family (2, 3, 7, 2 blocks; stages MBConv, MBConv, MOAT, MOAT), expansion 4,
SE ratio 0.25 of the block width in MBConv (SiLU inside SE), GELU elsewhere, head size 32,
avg-pool + 1x1 conv shortcuts, 2-D multi-head relative position bias learned on a 14x14 (stride
16) or 7x7 (stride 32) grid and resized to the window, final global-pool -> LayerNorm -> 1x1
conv head. This file is our own PyTorch implementation.

MOAT block: an MBConv without SE (expand 1x1 -> depth-wise 3x3 (stride here) -> shrink 1x1, with
a pooled shortcut), then ``x + Attention(LayerNorm(x))``: a transformer block whose MLP is
replaced by an MBConv placed before the attention, which also does the block's down-sampling.

Ours / open details:
- PyTorch symmetric padding instead of TF "SAME" (same output sizes; kernels see a one-pixel
  shifted grid at stride 2). BatchNorm eps 1e-3 as TF's default.
- Attention is global over each stage's map by default (classification setting of the paper);
  ``window_size`` enables non-overlapping windows (zero-padded to a multiple) for large inputs.
- The relative-position table is resized bilinearly (half-pixel centres, like tf.image.resize)
  when the window differs from the table's grid, e.g. 16x16 windows at 256x256 input.
- ``relative_position=False`` builds the "without positional embedding" checkpoints' variant.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, SqueezeExcite, use_fused_attn
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, linear_head, zoo_cfg

__all__ = ["MOAT", "MBConvBlock", "MOATBlock", "RelPosAttention"]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConvBlock(nn.Module):
    """Pre-norm inverted residual: BN -> 1x1 expand -> BN GELU -> dw 3x3 -> BN GELU -> [SE] -> 1x1."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion: int = 4, se: bool = True,
                 pool_size: int = 2, drop_path: float = 0.0):
        super().__init__()
        inner = out_chs * expansion
        pool = nn.AvgPool2d(pool_size, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else None
        self.shortcut = nn.Sequential(*[m for m in (
            pool, nn.Conv2d(in_chs, out_chs, 1, bias=True) if in_chs != out_chs else None) if m is not None])
        self.pre_norm = _bn(in_chs)
        self.expand = nn.Conv2d(in_chs, inner, 1, bias=False)
        self.expand_norm = _bn(inner)
        self.dw = nn.Conv2d(inner, inner, 3, stride, 1, groups=inner, bias=False)
        self.dw_norm = _bn(inner)
        self.act = nn.GELU()
        self.se = SqueezeExcite(inner, rd_channels=max(1, int(out_chs * 0.25)), act_layer=nn.SiLU) if se else None
        self.shrink = nn.Conv2d(inner, out_chs, 1, bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act(self.expand_norm(self.expand(self.pre_norm(x))))
        x = self.act(self.dw_norm(self.dw(x)))
        if self.se is not None:
            x = self.se(x)
        return shortcut + self.drop_path(self.shrink(x))


class RelPosAttention(nn.Module):
    """Multi-head self-attention on (B, L, C) windows of size (h, w) with a 2-D relative position bias."""

    def __init__(self, dim: int, head_dim: int = 32, table_size: int | None = 14):
        super().__init__()
        self.num_heads = max(1, dim // head_dim)
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, dim)
        self.rel_table = None
        if table_size:
            self.rel_table = nn.Parameter(torch.zeros(self.num_heads, 2 * table_size - 1, 2 * table_size - 1))
            nn.init.normal_(self.rel_table, std=0.02)

    def _bias(self, h: int, w: int) -> torch.Tensor:
        table = self.rel_table
        if table.shape[-2:] != (2 * h - 1, 2 * w - 1):
            table = F.interpolate(table[None], size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=False)[0]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[None, :] - ys[:, None] + h - 1  # key row - query row, shifted to be >= 0
        dx = xs[None, :] - xs[:, None] + w - 1
        return table[:, dy.to(table.device), dx.to(table.device)]  # (heads, L, L)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = self._bias(*hw).to(q.dtype) if self.rel_table is not None else None
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = (attn if bias is None else attn + bias).softmax(dim=-1) @ v
        return self.o(x.transpose(1, 2).reshape(b, n, c))


class MOATBlock(nn.Module):
    """MBConv (no SE) followed by ``x + Attention(LayerNorm(x))`` over the whole map or windows."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion: int = 4, head_dim: int = 32,
                 table_size: int | None = 14, window_size: int | None = None, pool_size: int = 2,
                 drop_path: float = 0.0):
        super().__init__()
        self.mbconv = MBConvBlock(in_chs, out_chs, stride, expansion, se=False, pool_size=pool_size,
                                  drop_path=drop_path)
        self.window_size = window_size
        self.norm = nn.LayerNorm(out_chs, eps=1e-5)
        self.attn = RelPosAttention(out_chs, head_dim, table_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        win = self.window_size
        if not win:
            y = self.attn(self.norm(x.flatten(2).transpose(1, 2)), (h, w))
            return y.transpose(1, 2).reshape(b, c, h, w)
        pad_h, pad_w = (-h) % win, (-w) % win
        xp = F.pad(x, (0, pad_w, 0, pad_h))
        n1, n2 = (h + pad_h) // win, (w + pad_w) // win
        t = xp.view(b, c, n1, win, n2, win).permute(0, 2, 4, 3, 5, 1).reshape(b * n1 * n2, win * win, c)
        t = self.attn(self.norm(t), (win, win))
        y = t.view(b, n1, n2, win, win, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h + pad_h, w + pad_w)
        return y[:, :, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mbconv(x)
        return x + self.drop_path(self._attend(x))


class MOAT(ClassifierMixin, nn.Module):
    """MOAT classifier (timm interface: forward_features / forward_head / reset_classifier)."""

    def __init__(
        self,
        stem_chs: tuple[int, int] = (32, 32),
        depths: tuple[int, ...] = (2, 3, 7, 2),
        dims: tuple[int, ...] = (32, 64, 128, 256),
        block_types: tuple[str, ...] = ("mbconv", "mbconv", "moat", "moat"),
        table_sizes: tuple[int | None, ...] = (None, None, 14, 7),
        window_size: int | None = None,
        relative_position: bool = True,
        head_dim: int = 32,
        expansion: int = 4,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs[0], 3, 2, 1, bias=True), _bn(stem_chs[0]), nn.GELU(),
            nn.Conv2d(stem_chs[0], stem_chs[1], 3, 1, 1, bias=True),
        )
        total, idx, chs = sum(depths), 0, stem_chs[1]
        stages, self.feature_info = [], [dict(num_chs=chs, reduction=2, module="stem.3")]
        for i, (depth, dim, kind) in enumerate(zip(depths, dims, block_types)):
            blocks = []
            for j in range(depth):
                stride, dp = (2 if j == 0 else 1), drop_path_rate * idx / total
                if kind == "moat":
                    table = table_sizes[i] if relative_position else None
                    blocks.append(MOATBlock(chs, dim, stride, expansion, head_dim, table, window_size, drop_path=dp))
                else:
                    blocks.append(MBConvBlock(chs, dim, stride, expansion, se=True, drop_path=dp))
                chs, idx = dim, idx + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=chs, reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = chs
        self.norm = nn.LayerNorm(chs, eps=1e-5)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(chs, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"rel_table"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))  # the official head normalises after pooling
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def _cfg() -> dict[str, Any]:
    return zoo_cfg("stem.0", input_size=(3, 256, 256), pool_size=(8, 8), crop_pct=0.95, interpolation="bicubic",
                   paper_ids="arXiv:2210.01820")


# name -> (stem widths, stage widths); every tiny-MOAT has depths (2, 3, 7, 2).
_VARIANTS: dict[str, tuple[tuple[int, int], tuple[int, ...]]] = {
    "tiny_moat_0": ((32, 32), (32, 64, 128, 256)),
    "tiny_moat_1": ((40, 40), (40, 80, 160, 320)),
    "tiny_moat_2": ((56, 56), (56, 112, 224, 448)),
    "tiny_moat_3": ((80, 80), (80, 160, 320, 640)),
}

default_cfgs = generate_default_cfgs({name: _cfg() for name in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MOAT:
    stem, dims = _VARIANTS[variant]
    return build_variant(MOAT, variant, pretrained, {"stem_chs": stem, "dims": dims}, kwargs,
                         feature_cfg=dict(flatten_sequential=True))


@register_model
def tiny_moat_0(pretrained: bool = False, **kwargs: Any) -> MOAT:
    """tiny-MOAT-0 (official table: 3.4M params, 1.1B FLOPs at 256)."""
    return _create("tiny_moat_0", pretrained, **kwargs)


@register_model
def tiny_moat_1(pretrained: bool = False, **kwargs: Any) -> MOAT:
    """tiny-MOAT-1 (official table: 5.1M params, 1.6B FLOPs at 256)."""
    return _create("tiny_moat_1", pretrained, **kwargs)


@register_model
def tiny_moat_2(pretrained: bool = False, **kwargs: Any) -> MOAT:
    """tiny-MOAT-2 (official table: 9.8M params, 3.0B FLOPs at 256)."""
    return _create("tiny_moat_2", pretrained, **kwargs)


@register_model
def tiny_moat_3(pretrained: bool = False, **kwargs: Any) -> MOAT:
    """tiny-MOAT-3 (official table: 19.5M params, 6.0B FLOPs at 256)."""
    return _create("tiny_moat_3", pretrained, **kwargs)
