"""SimpleNet (v1): a plain 13-layer conv/BN/ReLU stack, CIFAR and ImageNet variants.

Paper: Seyyed Hossein Hasanpour, Mohammad Rouhani, Mohsen Fayyaz, Mohammad Sabokrou,
"Lets keep it simple, Using simple architectures to outperform deeper and more complex
architectures", arXiv:1608.06037.
Layer widths, the two 1x1 layers, pooling positions, the ImageNet "stride modes" m1/m2 and the
width scales of the small variants are read from the authors' repositories
(https://github.com/Coderx7/SimpleNet, https://github.com/Coderx7/SimpleNet_Pytorch,
imagenet/simplenet.py). This file is our own implementation.

Variants:
- ``simplenet_cifar``: the 5.48M-parameter CIFAR network (32x32 input, 10 classes). Four 2x2
  max pools; the last 3x3 conv sees a 2x2 map. This is the corrected layout (no extra pooling
  after the 512-wide layer; see the authors' note about ``simplenet_cifar_5m_extra_pool``).
- ``simplenetv1_5m_m1/_m2``: the ImageNet 5M networks (224x224). "m1" gives the first three
  convs stride 2, "m2" the first, second and fourth (the third stays at stride 1); m2 costs more
  MACs for the same parameters.
- ``simplenetv1_small_m{1,2}_05/_075`` (width x0.5 / x0.75) and ``simplenetv1_9m_m{1,2}``: the
  other ImageNet sizes from the same table, cheap to add.

Ours / open details:
- The paper trains with dropout after most layers; we expose only timm's ``drop_rate`` before
  the classifier (the per-layer rates are training recipe, not architecture).
- Global pooling is a max over the whole map, as in the authors' code (``global_pool='max'``);
  ``'avg'`` is accepted too.
- BatchNorm momentum 0.05 and Xavier-uniform conv init with the ReLU gain follow the authors' code.
"""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import CIFAR10_MEAN, CIFAR10_STD, ClassifierMixin, build_variant, linear_head, zoo_cfg

__all__ = ["SimpleNet"]

# Layer spec: int = 3x3 conv of that width, ("k1", w) = 1x1 conv, "p" = 2x2 max pool.
LayerSpec = Union[int, str, tuple[str, int]]
_CIFAR_5M: tuple[LayerSpec, ...] = (
    64, 128, 128, 128, "p", 128, 128, 256, "p", 256, 256, "p", 512, ("k1", 2048), ("k1", 256), "p", 256,
)
_IMAGENET_5M: tuple[LayerSpec, ...] = (
    64, 128, 128, 128, 128, 128, "p", 256, 256, 256, 512, "p", ("k1", 2048), ("k1", 256), 256,
)
_IMAGENET_9M: tuple[LayerSpec, ...] = (
    128, 192, 192, 192, 192, 192, "p", 320, 320, 320, 640, "p", ("k1", 2560), ("k1", 320), 320,
)
# Stride mode -> {index in the layer spec (pools included): stride}.
_STRIDE_MODES: dict[int, dict[int, int]] = {0: {}, 1: {0: 2, 1: 2, 2: 2}, 2: {0: 2, 1: 2, 2: 1, 3: 2}}


class SimpleNet(ClassifierMixin, nn.Module):
    """SimpleNet classifier (timm interface: forward_features / forward_head / reset_classifier)."""

    classifier_attr = "classifier"

    def __init__(
        self,
        layers: tuple[LayerSpec, ...] = _IMAGENET_5M,
        scale: float = 1.0,
        stride_mode: int = 2,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "max",
    ):
        super().__init__()
        if global_pool not in ("max", "avg", ""):
            raise ValueError(f"global_pool must be 'max', 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        strides = _STRIDE_MODES[stride_mode]
        modules: list[nn.Module] = []
        chans = in_chans
        for idx, spec in enumerate(layers):
            stride = strides.get(idx, 2 if spec == "p" else 1)
            if spec == "p":
                modules.append(nn.MaxPool2d(2, stride))
                continue
            kernel, width = (1, spec[1]) if isinstance(spec, tuple) else (3, spec)
            out = round(width * scale)
            modules += [
                nn.Conv2d(chans, out, kernel, stride, kernel // 2),
                nn.BatchNorm2d(out, eps=1e-5, momentum=0.05),
                nn.ReLU(inplace=True),
            ]
            chans = out
        self.features = nn.Sequential(*modules)
        self.num_features = self.head_hidden_size = chans
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = linear_head(chans, num_classes)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "max":
            x = x.amax(dim=(2, 3))
        elif self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return zoo_cfg("features.0", "classifier", **{
        "crop_pct": 0.875, "interpolation": "bicubic", "paper_ids": "arXiv:1608.06037", **kwargs,
    })


_VARIANTS: dict[str, dict[str, Any]] = {
    "simplenet_cifar": dict(layers=_CIFAR_5M, stride_mode=0),
    "simplenetv1_small_m1_05": dict(layers=_IMAGENET_5M, scale=0.5, stride_mode=1),
    "simplenetv1_small_m2_05": dict(layers=_IMAGENET_5M, scale=0.5, stride_mode=2),
    "simplenetv1_small_m1_075": dict(layers=_IMAGENET_5M, scale=0.75, stride_mode=1),
    "simplenetv1_small_m2_075": dict(layers=_IMAGENET_5M, scale=0.75, stride_mode=2),
    "simplenetv1_5m_m1": dict(layers=_IMAGENET_5M, stride_mode=1),
    "simplenetv1_5m_m2": dict(layers=_IMAGENET_5M, stride_mode=2),
    "simplenetv1_9m_m1": dict(layers=_IMAGENET_9M, stride_mode=1),
    "simplenetv1_9m_m2": dict(layers=_IMAGENET_9M, stride_mode=2),
}

default_cfgs = generate_default_cfgs({
    name: _cfg(num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    if name == "simplenet_cifar" else _cfg()
    for name in _VARIANTS
})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> SimpleNet:
    return build_variant(SimpleNet, variant, pretrained, _VARIANTS[variant], kwargs)


@register_model
def simplenet_cifar(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNet for CIFAR (paper: 5.48M params, 652M ops at 32x32)."""
    return _create("simplenet_cifar", pretrained, **kwargs)


@register_model
def simplenetv1_small_m1_05(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet, width x0.5, stride mode 1 (1.51M params)."""
    return _create("simplenetv1_small_m1_05", pretrained, **kwargs)


@register_model
def simplenetv1_small_m2_05(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet, width x0.5, stride mode 2 (1.51M params)."""
    return _create("simplenetv1_small_m2_05", pretrained, **kwargs)


@register_model
def simplenetv1_small_m1_075(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet, width x0.75, stride mode 1 (3.29M params)."""
    return _create("simplenetv1_small_m1_075", pretrained, **kwargs)


@register_model
def simplenetv1_small_m2_075(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet, width x0.75, stride mode 2 (3.29M params)."""
    return _create("simplenetv1_small_m2_075", pretrained, **kwargs)


@register_model
def simplenetv1_5m_m1(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet 5M, stride mode 1 (5.75M params, 1.35 GMACs)."""
    return _create("simplenetv1_5m_m1", pretrained, **kwargs)


@register_model
def simplenetv1_5m_m2(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet 5M, stride mode 2 (5.75M params, 1.69 GMACs)."""
    return _create("simplenetv1_5m_m2", pretrained, **kwargs)


@register_model
def simplenetv1_9m_m1(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet 9M, stride mode 1 (9.51M params)."""
    return _create("simplenetv1_9m_m1", pretrained, **kwargs)


@register_model
def simplenetv1_9m_m2(pretrained: bool = False, **kwargs: Any) -> SimpleNet:
    """SimpleNetV1 ImageNet 9M, stride mode 2 (9.51M params)."""
    return _create("simplenetv1_9m_m2", pretrained, **kwargs)
