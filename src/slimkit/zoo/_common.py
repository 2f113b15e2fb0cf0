"""What every zoo family shares: timm's classifier interface, weight inits, pretrained cfgs, the builder.

Underscored so that ``slimkit.zoo`` does not import it as a family.  Nothing here changes a model's
modules, names or numbers: the families used to spell these out one by one, identically.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "ClassifierMixin", "linear_head", "init_linear_trunc_normal", "init_cnn_",
    "zoo_cfg", "build_variant",
]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def linear_head(in_features: int, num_classes: int) -> nn.Module:
    """A new classifier: Linear(in_features, num_classes), or Identity when num_classes is 0."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


class ClassifierMixin:
    """timm's classifier interface (get_classifier / reset_classifier / forward) for an nn.Module.

    The classifier is the Linear `classifier_attr` fed by the `head_in_attr` features; a subclass
    defines forward_features and forward_head.  Put the mixin before nn.Module in the bases.
    """

    classifier_attr: str = "head"
    head_in_attr: str = "num_features"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        # Families whose head pools one fixed way keep no `global_pool`; they ignore the argument.
        if global_pool is not None and hasattr(self, "global_pool"):
            self.global_pool = global_pool
        setattr(self, self.classifier_attr, linear_head(getattr(self, self.head_in_attr), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]


def init_linear_trunc_normal(m: nn.Module, norms: tuple[type[nn.Module], ...] = ()) -> None:
    """ViT-style init for `module.apply`: Linear weights trunc-normal(0.02), biases 0; `norms` to 1/0."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, norms):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_cnn_(
    model: nn.Module, norms: tuple[type[nn.Module], ...] = (), conv_bias: bool = False, **kaiming: Any
) -> None:
    """Changes `model` in place: CNN-style init (convs Kaiming fan-out, `norms` 1/0, Linear N(0, 0.01) and 0).

    Conv biases are zeroed only with `conv_bias`; `kaiming` goes to kaiming_normal_ (e.g. nonlinearity).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", **kaiming)
            if conv_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, norms):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def zoo_cfg(first_conv: str, classifier: str = "head", **kwargs: Any) -> dict[str, Any]:
    """A pretrained-cfg dict: ImageNet 1000 classes at 224 with ImageNet mean/std unless `kwargs` say else."""
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv, "classifier": classifier, **kwargs,
    }


def build_variant(
    model_cls: Callable[..., nn.Module], variant: str, pretrained: bool, arch: dict[str, Any],
    kwargs: dict[str, Any], **build_kwargs: Any,
) -> Any:
    """Builds `variant` with build_model_with_cfg from its architecture `arch` updated by the caller's kwargs."""
    return build_model_with_cfg(model_cls, variant, pretrained, **build_kwargs, **{**arch, **kwargs})
