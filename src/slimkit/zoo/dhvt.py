"""DHVT, the Dynamic Hybrid Vision Transformer for training from scratch on small datasets.

Paper: Z. Lu, H. Xie, C. Liu, Y. Zhang, "Bridging the Gap Between Vision Transformers and
Convolutional Neural Networks on Small Datasets", NeurIPS 2022.  Facts (SOPE: a stack of
stride-2 3x3 conv+BN layers between two learnable affine maps, 1/2/4 of them for patch 2/4/16;
no positional embedding; HI-MHSA: one "head token" per head, made from the mean of that head's
channel group, projected to full width, normalised, added to its own learned position, attending
with the patch tokens and averaged into the class token afterwards; DAFF: 1x1 expand - dw 3x3 with
a shortcut - 1x1 project, each with BN, and a squeeze-excite on the pooled patch map that rescales
the class token; the tiny/small widths, depths and head counts of the CIFAR and ImageNet models)
come from the paper and the authors' repository (ArieSeirack/DHVT); the code here is our own.

Variants: ``dhvt_tiny_cifar_patch4``, ``dhvt_small_cifar_patch4``, ``dhvt_tiny_cifar_patch2``,
``dhvt_small_cifar_patch2`` (32x32, 100 classes), ``dhvt_tiny_imagenet_patch16`` and
``dhvt_small_imagenet_patch16`` (224x224, 1000 classes).  The DomainNet models of the paper are
the ImageNet ones with 4 heads for tiny; they are not registered separately.

Ours where the paper is silent: attention runs through ``F.scaled_dot_product_attention``
(same maths); BatchNorm replaces the repository's SyncBatchNorm; the squeeze-excite weights on the
class token are used raw (no sigmoid), as in the repository.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_linear_trunc_normal, linear_head, zoo_cfg

__all__ = ["PAPER_TABLE", "DHVT", "HIAttention", "DAFF", "SOPE"]


def _linspace(stop: float, n: int) -> list[float]:
    """Stochastic-depth rates 0..stop (plain Python, so models also build on the meta device)."""
    return [stop * i / max(n - 1, 1) for i in range(n)]


class Affine(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha + self.beta


class SOPE(nn.Module):
    """Sequential overlapping patch embedding: affine, log2(patch) x (3x3/2 conv + BN), affine."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        n = {2: 1, 4: 2, 16: 4}.get(patch_size)
        if n is None:
            raise ValueError(f"SOPE supports patch sizes 2, 4, 16, not {patch_size}")
        widths = [in_chans] + [embed_dim // 2 ** (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[i + 1])]
            if i < n - 1 or n == 1:  # the single-conv (patch 2) embedding ends with GELU too
                layers.append(nn.GELU())
        self.pre_affine, self.proj, self.post_affine = Affine(in_chans), nn.Sequential(*layers), Affine(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_affine(self.proj(self.pre_affine(x))).flatten(2).transpose(1, 2)


class HIAttention(nn.Module):
    """Head-interacted multi-head self-attention (HI-MHSA)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.ht_proj = nn.Linear(self.head_dim, dim)
        self.ht_norm = nn.LayerNorm(self.head_dim)
        self.ht_pos = nn.Parameter(torch.zeros(1, num_heads, dim))
        trunc_normal_(self.ht_pos, std=0.02)

    def head_tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        groups = x.view(b, n, h, d).mean(1)  # (b, h, d): each head's channel group, pooled
        tokens = self.ht_proj(groups).view(b, h, h, d)
        return F.gelu(self.ht_norm(tokens)).flatten(2) + self.ht_pos  # (b, h, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        x = torch.cat([x, self.head_tokens(x)], dim=1)
        q, k, v = self.qkv(x).view(b, n + h, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n + h, c)
        x = self.proj(x)
        cls, patches, heads = x.split([1, n - 1, h], dim=1)
        return torch.cat([cls + heads.mean(1, keepdim=True), patches], dim=1)


class DAFF(nn.Module):
    """Dynamic aggregation feed-forward on the patch map; its SE rescales the class token."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(dim, hidden, 1), nn.BatchNorm2d(hidden)
        self.conv2, self.bn2 = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden), nn.BatchNorm2d(hidden)
        self.conv3, self.bn3 = nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim)
        self.compress, self.excitation = nn.Linear(dim, dim // 4), nn.Linear(dim // 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = math.isqrt(int(n) - 1)  # square patch grid
        cls, tokens = x.split([1, n - 1], dim=1)
        y = F.gelu(self.bn1(self.conv1(tokens.transpose(1, 2).reshape(b, c, side, side))))
        y = y + F.gelu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        weight = self.excitation(F.gelu(self.compress(y.mean((2, 3))))).unsqueeze(1)
        return torch.cat([cls * weight, y.flatten(2).transpose(1, 2)], dim=1)


class DHVTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), HIAttention(dim, num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), DAFF(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DHVT(ClassifierMixin, nn.Module):
    """DHVT (timm interface); forward_features returns the normalised token sequence."""

    head_in_attr = "embed_dim"

    def __init__(
        self,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_embed = SOPE(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        dpr = _linspace(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[DHVTBlock(embed_dim, num_heads, mlp_ratio, r) for r in dpr])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = linear_head(embed_dim, num_classes)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(partial(init_linear_trunc_normal, norms=(nn.LayerNorm, nn.BatchNorm2d)))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        if pre_logits:
            return x
        return self.head(F.dropout(x, self.drop_rate, self.training))


_CIFAR = dict(num_classes=100, input_size=(3, 32, 32), mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
_IMNET: dict = {}  # zoo_cfg's ImageNet defaults
_VARIANTS = {  # name: (pretrained cfg overrides, architecture)
    "dhvt_tiny_cifar_patch4": (_CIFAR, dict(patch_size=4, embed_dim=192, num_heads=4)),
    "dhvt_small_cifar_patch4": (_CIFAR, dict(patch_size=4, embed_dim=384, num_heads=8)),
    "dhvt_tiny_cifar_patch2": (_CIFAR, dict(patch_size=2, embed_dim=192, num_heads=4)),
    "dhvt_small_cifar_patch2": (_CIFAR, dict(patch_size=2, embed_dim=384, num_heads=8)),
    "dhvt_tiny_imagenet_patch16": (_IMNET, dict(patch_size=16, embed_dim=192, num_heads=3)),
    "dhvt_small_imagenet_patch16": (_IMNET, dict(patch_size=16, embed_dim=384, num_heads=6)),
}
#: Published numbers: the ImageNet rows of the authors' README (after their FLOPs fix, counted with
#: the DeepSpeed profiler) and the CIFAR-100 DHVT-S (patch 2) parameter count from the abstract.
#: The paper's CIFAR table was not reachable from this machine; those rows are left out.
PAPER_TABLE = {
    "dhvt_small_cifar_patch2": {"params": "22.8M"},
    "dhvt_tiny_imagenet_patch16": {"params": "6.2M", "macs": "1.4G"},
    "dhvt_small_imagenet_patch16": {"params": "23.8M", "macs": "5.1G"},
}
default_cfgs = generate_default_cfgs(
    {name: zoo_cfg("patch_embed.proj.0", url="", **cfg) for name, (cfg, _) in _VARIANTS.items()}
)


def _create(variant: str, pretrained: bool, **kwargs) -> DHVT:
    return build_variant(DHVT, variant, pretrained, _VARIANTS[variant][1], kwargs)


@register_model
def dhvt_tiny_cifar_patch4(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-T, patch 4, for 32x32 CIFAR-100."""
    return _create("dhvt_tiny_cifar_patch4", pretrained, **kwargs)


@register_model
def dhvt_small_cifar_patch4(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-S, patch 4, for 32x32 CIFAR-100."""
    return _create("dhvt_small_cifar_patch4", pretrained, **kwargs)


@register_model
def dhvt_tiny_cifar_patch2(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-T, patch 2, for 32x32 CIFAR-100."""
    return _create("dhvt_tiny_cifar_patch2", pretrained, **kwargs)


@register_model
def dhvt_small_cifar_patch2(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-S, patch 2, for 32x32 CIFAR-100 (22.8M params in the paper's abstract)."""
    return _create("dhvt_small_cifar_patch2", pretrained, **kwargs)


@register_model
def dhvt_tiny_imagenet_patch16(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-T for ImageNet at 224x224 (6.2M params, 1.4 GFLOPs in the authors' README)."""
    return _create("dhvt_tiny_imagenet_patch16", pretrained, **kwargs)


@register_model
def dhvt_small_imagenet_patch16(pretrained: bool = False, **kwargs) -> DHVT:
    """DHVT-S for ImageNet at 224x224 (23.8M params, 5.1 GFLOPs in the authors' README)."""
    return _create("dhvt_small_imagenet_patch16", pretrained, **kwargs)
