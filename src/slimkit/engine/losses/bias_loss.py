"""Bias Loss: cross-entropy re-weighted by the feature variance of each sample.

Paper: L. Abrahamyan, V. Ziatchin, Y. Chen, N. Deligiannis, "Bias Loss for Mobile Neural
Networks", ICCV 2021.  For a batch of N samples with logits z_i, labels y_i and the activation
map F_i of a late layer (SkipNet: the last 1x1 conv before pooling)::

    v_i      = Var(F_i)                       (over all elements of the sample's map)
    v_hat_i  = (v_i - min_j v_j) / (max_j v_j - min_j v_j)
    w_i      = exp(alpha * v_hat_i) - beta
    loss     = mean_i  w_i * CE(z_i, y_i)

Samples with more diverse features (higher variance) get more weight; alpha = beta = 0.3 are the
paper's defaults.  The variance is treated as a constant (no gradient flows through the weights),
as in the authors' code.

Ours where the paper is silent: ``normalisation="batch"`` (default) scales the variances by the
batch's own min and max; ``"running"`` uses the smallest variance seen so far instead of the batch
minimum, which is what the authors' repository does by default.  When every variance in the batch
is equal (e.g. a batch of one) the scaled variance is taken as 0, so every weight is 1 - beta,
where the repository would divide by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.engine.losses import LOSSES

__all__ = ["BiasLossConfig", "BiasLoss", "FeatureBiasLoss", "bias_loss", "make_bias_loss"]


@dataclass
class BiasLossConfig:
    """Settings of the Bias Loss (paper defaults)."""

    alpha: float = 0.3
    beta: float = 0.3
    normalisation: str = "batch"  # "batch" | "running"

    def __post_init__(self) -> None:
        if self.normalisation not in ("batch", "running"):
            raise ValueError(f"normalisation must be 'batch' or 'running', not {self.normalisation!r}")


def _scale(var: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    span = var.max() - var.min()
    if span <= 0:
        return torch.zeros_like(var)
    return (var - low) / span


def bias_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    features: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.3,
    low: torch.Tensor | None = None,
) -> torch.Tensor:
    """Functional Bias Loss; `low` overrides the batch minimum variance (running mode)."""
    var = features.detach().flatten(1).var(dim=1)  # unbiased, like torch.var's default
    scaled = _scale(var, var.min() if low is None else low)
    weights = torch.exp(alpha * scaled) - beta
    return (weights * F.cross_entropy(logits, target, reduction="none")).mean()


class BiasLoss(nn.Module):
    """Bias Loss module: ``loss = BiasLoss()(logits, target, features)``."""

    def __init__(self, config: BiasLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or BiasLossConfig()
        self.register_buffer("running_min", torch.tensor(float("inf")), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        low = None
        if cfg.normalisation == "running":
            batch_min = features.detach().flatten(1).var(dim=1).min()
            self.running_min = torch.minimum(self.running_min, batch_min)
            low = self.running_min
        return bias_loss(logits, target, features, cfg.alpha, cfg.beta, low)


class FeatureBiasLoss(nn.Module):
    """The Bias Loss as an engine.fit loss: a forward hook keeps the feature map of `layer` of the model
    being trained (default: its last layer with a spatial feature map, SkipNet's last 1x1 conv block)."""

    def __init__(self, model: nn.Module, layer: str, config: BiasLossConfig | None = None) -> None:
        super().__init__()
        self.layer, self.bias = layer, BiasLoss(config)
        self._features: torch.Tensor | None = None
        self._handle = model.get_submodule(layer).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs, output) -> None:
        self._features = output

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._features is None or len(self._features) != len(target):
            raise RuntimeError(f"the Bias Loss saw no features from layer {self.layer!r} in this forward pass")
        return self.bias(logits, target, self._features.float())

    def close(self) -> None:
        self._handle.remove()


@LOSSES.register("bias")
def make_bias_loss(model: nn.Module, example_inputs: torch.Tensor, layer: str | None = None, alpha: float = 0.3,
                   beta: float = 0.3, normalisation: str = "batch") -> FeatureBiasLoss:
    """The Bias Loss on `layer`'s features (default: the model's last spatial feature map)."""
    from slimkit.compress.distill.feature import last_feature_layer
    from slimkit.errors import BadInputError

    layer = layer or last_feature_layer(model, example_inputs)
    if layer not in dict(model.named_modules()):
        raise BadInputError(f"the Bias Loss needs a feature layer: no layer named {layer!r} in {type(model).__name__}")
    return FeatureBiasLoss(model, layer, BiasLossConfig(alpha, beta, normalisation))
