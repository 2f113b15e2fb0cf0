"""TVConv, translation-variant convolution for layout-aware inputs, and a face model that uses it.

Paper: J. Chen, T. He, W. Zhuo, L. Ma, S. Ha, S.-H. G. Chan, "TVConv: Efficient Translation
Variant Convolution for Layout-aware Visual Processing", CVPR 2022.  A TVConv is a depth-wise
k x k convolution whose kernel differs at every output position.  The kernels come from a
weight-generating block (3x3 conv + LayerNorm + ReLU layers, then a 3x3 conv to k*k*C maps) fed by
learned "affinity maps"; nothing depends on the input, so after training the kernels are computed
once and the block is dropped (``inference_mode``/:func:`reparameterize_`).  Facts (4 affinity maps,
64 hidden channels, 3 hidden layers, no bias, 3x3 kernels; the face-recognition MobileNetV2 with a
stride-1 stem for 96x96 aligned faces, a 512-wide last conv and a BN-pool-FC-BN 512-d embedding;
widths x0.1/x0.2/x0.3/x0.5/x1.0) come from the paper and the authors' repository
(JierunChen/TVConv); the code here is our own.

Counting: the per-position kernels are applied as an einsum over unfolded patches, which slimkit's
counter counts as C*k*k MACs per output pixel (the same as the depth-wise conv it replaces).  In
training mode the weight-generating block runs every forward (independent of the batch) and
dominates the MACs at high resolution; in eval mode without autograd the kernels are computed once
when ``.eval()`` is called and reused (recomputed if a parameter changes), so profiling, latency
and ONNX export of an eval-mode model see the deployed cost.  :func:`reparameterize_` makes that
permanent and drops the generator (fewer parameters: the kernels themselves).

Ours where the paper is silent: the map sizes follow from ``img_size`` (default 96x96) rather than
being hard-coded per stage; ``num_classes=0`` (the default) returns the 512-d face embedding, and a
positive ``num_classes`` adds a linear classifier on it (the paper trains with an AM-Softmax head,
which is not part of the deployed model).  The ShuffleNetV2 hosts of the paper are not registered.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, init_cnn_, linear_head, zoo_cfg

__all__ = ["TVConv", "TVConvMobileNetV2", "reparameterize_"]


def _gen_block(cin: int, cout: int, size: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.LayerNorm([cout, *size]), nn.ReLU(inplace=True))


class TVConv(nn.Module):
    """Depth-wise k x k convolution with a different kernel at every output position.

    ``size`` is the output (h, w); the input must be ``stride`` times that (up to padding).
    ``inference_mode=True`` builds the deploy form (kernels stored directly, no generator).
    """

    def __init__(
        self,
        channels: int,
        size: tuple[int, int],
        kernel_size: int = 3,
        stride: int = 1,
        affinity_maps: int = 4,
        hidden: int = 64,
        hidden_layers: int = 3,
        bias: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.channels, self.size, self.k, self.stride = channels, tuple(size), kernel_size, stride
        taps = kernel_size * kernel_size
        if inference_mode:
            self.kernels = nn.Parameter(torch.empty(channels, taps, *self.size))
            nn.init.normal_(self.kernels, 0, math.sqrt(2.0 / taps))
            self.bias_map = nn.Parameter(torch.zeros(channels, *self.size)) if bias else None
            return
        self.affinity = nn.Parameter(torch.ones(1, affinity_maps, *self.size))
        self.weight_gen = self._generator(affinity_maps, hidden, hidden_layers, channels * taps)
        self.bias_gen = self._generator(affinity_maps, hidden, hidden_layers, channels) if bias else None
        self._cache: tuple | None = None

    def _generator(self, cin: int, hidden: int, layers: int, cout: int) -> nn.Sequential:
        blocks = [_gen_block(cin, hidden, self.size)] + [_gen_block(hidden, hidden, self.size) for _ in range(layers)]
        return nn.Sequential(*blocks, nn.Conv2d(hidden, cout, 3, 1, 1, bias=False))

    @property
    def inference_mode(self) -> bool:
        return hasattr(self, "kernels")

    def train(self, mode: bool = True) -> "TVConv":
        """Switch mode; entering eval precomputes the kernels, as a deployed TVConv would hold them."""
        super().train(mode)
        self._cache = None
        if not mode and not self.inference_mode:
            with torch.no_grad():
                self._cached_kernels()
        return self

    def _cached_kernels(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # keyed on storage and in-place version: optimiser steps, load_state_dict and .to() invalidate it
        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._generate())
        return self._cache[1]

    def kernels_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The per-position kernels (C, k*k, h, w) and bias map (C, h, w) or None."""
        if self.inference_mode:
            return self.kernels, self.bias_map
        if not self.training and not torch.is_grad_enabled():
            return self._cached_kernels()
        return self._generate()

    def _generate(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        taps = self.k * self.k
        kernels = self.weight_gen(self.affinity).view(self.channels, taps, *self.size)
        bias = self.bias_gen(self.affinity).view(self.channels, *self.size) if self.bias_gen is not None else None
        return kernels, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = self.size
        kernels, bias = self.kernels_and_bias()
        patches = F.unfold(x, self.k, padding=self.k // 2, stride=self.stride)
        patches = patches.view(b, self.channels, self.k * self.k, h * w)
        out = torch.einsum("bctl,ctl->bcl", patches, kernels.reshape(self.channels, -1, h * w)).view(b, -1, h, w)
        return out if bias is None else out + bias

    @torch.no_grad()
    def reparameterize(self) -> "TVConv":
        """A new TVConv in inference form holding this layer's current kernels."""
        kernels, bias = self.kernels_and_bias()
        new = TVConv(self.channels, self.size, self.k, self.stride, bias=bias is not None, inference_mode=True)
        new.kernels.copy_(kernels)
        if bias is not None:
            new.bias_map.copy_(bias)
        return new.to(kernels.device)


def reparameterize_(model: nn.Module) -> nn.Module:
    """Replace (in place) every training-form TVConv in `model` by its inference form; returns model."""
    for name, child in model.named_children():
        if isinstance(child, TVConv) and not child.inference_mode:
            setattr(model, name, child.reparameterize())
        else:
            reparameterize_(child)
    return model


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class TVInvertedResidual(nn.Module):
    """MobileNetV2 block whose depth-wise 3x3 is a TVConv."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, size: tuple[int, int], **tv) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        layers = [_conv_bn_relu6(cin, hidden)] if expand != 1 else []
        layers += [
            TVConv(hidden, size, stride=stride, **tv), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]  # fmt: skip
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# expansion, out channels, repeats, stride (MobileNetV2 table; the stem keeps full resolution)
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class TVConvMobileNetV2(ClassifierMixin, nn.Module):
    """Face-recognition MobileNetV2 with TVConv (timm interface, 512-d embedding output)."""

    def __init__(
        self,
        width: float = 0.1,
        img_size: int | tuple[int, int] = 96,
        embed_dim: int = 512,
        num_classes: int = 0,
        in_chans: int = 3,
        inference_mode: bool = False,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes, self.drop_rate = num_classes, drop_rate
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn_relu6(in_chans, cin, 3, 1)]
        for t, c, n, s in _SETTINGS:
            cout = make_divisible(c * width)
            for i in range(n):
                stride = s if i == 0 else 1
                size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
                layers.append(TVInvertedResidual(cin, cout, stride, t, size, inference_mode=inference_mode))
                cin = cout
        last = make_divisible(512 * max(1.0, width))
        layers.append(_conv_bn_relu6(cin, last))
        self.features = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(last)
        self.embed = nn.Sequential(nn.Linear(last, embed_dim), nn.BatchNorm1d(embed_dim))
        self.num_features = self.head_hidden_size = embed_dim
        self.head = linear_head(embed_dim, num_classes)
        init_cnn_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.embed(self.norm(x).mean((2, 3)))
        if pre_logits:
            return x
        return self.head(F.dropout(x, self.drop_rate, self.training))


def _cfg() -> dict:
    return zoo_cfg("features.0.0", url="", num_classes=0, input_size=(3, 96, 96), fixed_input_size=True,
                   pool_size=(6, 6), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


_WIDTHS = {f"tvconv_mobilenetv2_x{w.replace('.', '_')}": float(w) for w in ("0.1", "0.2", "0.3", "0.5", "1.0")}
default_cfgs = generate_default_cfgs({name: _cfg() for name in _WIDTHS})


def _create(variant: str, pretrained: bool, **kwargs) -> TVConvMobileNetV2:
    return build_variant(TVConvMobileNetV2, variant, pretrained, dict(width=_WIDTHS[variant]), kwargs)


@register_model
def tvconv_mobilenetv2_x0_1(pretrained: bool = False, **kwargs) -> TVConvMobileNetV2:
    """Face MobileNetV2 x0.1 with TVConv, 96x96 input, 512-d embedding."""
    return _create("tvconv_mobilenetv2_x0_1", pretrained, **kwargs)


@register_model
def tvconv_mobilenetv2_x0_2(pretrained: bool = False, **kwargs) -> TVConvMobileNetV2:
    """Face MobileNetV2 x0.2 with TVConv."""
    return _create("tvconv_mobilenetv2_x0_2", pretrained, **kwargs)


@register_model
def tvconv_mobilenetv2_x0_3(pretrained: bool = False, **kwargs) -> TVConvMobileNetV2:
    """Face MobileNetV2 x0.3 with TVConv."""
    return _create("tvconv_mobilenetv2_x0_3", pretrained, **kwargs)


@register_model
def tvconv_mobilenetv2_x0_5(pretrained: bool = False, **kwargs) -> TVConvMobileNetV2:
    """Face MobileNetV2 x0.5 with TVConv."""
    return _create("tvconv_mobilenetv2_x0_5", pretrained, **kwargs)


@register_model
def tvconv_mobilenetv2_x1_0(pretrained: bool = False, **kwargs) -> TVConvMobileNetV2:
    """Face MobileNetV2 x1.0 with TVConv."""
    return _create("tvconv_mobilenetv2_x1_0", pretrained, **kwargs)
