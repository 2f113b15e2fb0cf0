"""Channel-importance criteria in the criterion registry: `@register_criterion("name")`.

A criterion factory returns a Torch-Pruning `Importance` (called on a dependency group,
it returns one score per channel of the group's root). Data-driven criteria get a
`Calibration` (a few labelled batches) and may run forward/backward passes first.
Scores are normalised by their group mean, so groups can be ranked against each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from slimkit.errors import BadInputError
from slimkit.utils.registry import Registry

__all__ = ["Calibration", "CRITERIA", "register_criterion", "available_criteria", "build_importance",
           "criterion_needs_data"]


@dataclass
class Calibration:
    """A few labelled batches for data-driven criteria: list of (inputs, labels)."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]


CRITERIA: Registry = Registry("criterion", modules={"lrp": "slimkit.compress.prune.lrp"})
_CRITERIA = CRITERIA  # older name


def register_criterion(name: str, *, needs_data: bool = False) -> Callable:
    """Register `factory(model, calibration, seed) -> Importance` under `name`."""
    return CRITERIA.register(name, needs_data=needs_data)


def available_criteria() -> list[str]:
    return CRITERIA.names()


def criterion_needs_data(name: str) -> bool:
    return bool(CRITERIA.meta(name).get("needs_data", False))


def build_importance(name: str, model: nn.Module, calib: Calibration | None = None, seed: int = 0):
    """Instantiate criterion `name` for `model` (data-driven ones run on `calib` now)."""
    factory = CRITERIA.get(name)
    if criterion_needs_data(name) and (calib is None or not calib.batches):
        raise BadInputError(f"criterion {name!r} needs data: pass --data (calibration batches)")
    return factory(model, calib, seed)


@register_criterion("l1")
def _l1(model: nn.Module, calib: Calibration | None, seed: int):
    """Group L1 norm of the weights of every layer that loses the channel."""
    return tp.importance.GroupMagnitudeImportance(p=1, normalizer="mean", group_reduction="mean")


@register_criterion("l2")
def _l2(model: nn.Module, calib: Calibration | None, seed: int):
    """Group L2 norm (squared) of the weights of every layer that loses the channel."""
    return tp.importance.GroupMagnitudeImportance(p=2, normalizer="mean", group_reduction="mean")


class _BNScaleOrL1(tp.importance.Importance):
    """|gamma| of the group's BatchNorm layers; groups without BatchNorm fall back to L1."""

    def __init__(self) -> None:
        self.bn = tp.importance.BNScaleImportance(normalizer="mean")
        self.l1 = tp.importance.GroupMagnitudeImportance(p=1, normalizer="mean")

    def __call__(self, group):
        imp = self.bn(group)
        return imp if imp is not None else self.l1(group)


@register_criterion("bn_scale")
def _bn_scale(model: nn.Module, calib: Calibration | None, seed: int):
    """BatchNorm scale |gamma| (network slimming); L1 where a group has no BatchNorm."""
    return _BNScaleOrL1()


class _SeededRandom(tp.importance.Importance):
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, group):
        return torch.rand(len(group[0].idxs), generator=self.gen)


@register_criterion("random")
def _random(model: nn.Module, calib: Calibration | None, seed: int):
    """Uniform random scores (seeded): the baseline every paper compares with."""
    return _SeededRandom(seed)


def accumulate_gradients(model: nn.Module, calib: Calibration) -> None:
    """Sum the cross-entropy gradients of the calibration batches into `.grad` (model left in its mode)."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in calib.batches:
            F.cross_entropy(model(x), y).backward()


class _GroupTaylor(tp.importance.GroupTaylorImportance):
    """Torch-Pruning's group Taylor plus the BatchNorm layers it skips: its BN branch tests for the
    GroupNorm handler, so a group's gamma * dL/dgamma never counted (torch-pruning 1.6)."""

    def __init__(self) -> None:
        # Raw sums; the mean normalisation below makes "sum" and "mean" over layers rank alike.
        super().__init__(group_reduction="sum", normalizer=None)

    @torch.no_grad()
    def __call__(self, group):
        base = super().__call__(group)
        norms = torch.zeros(len(group[0].idxs))
        found = False
        for i, (dep, idxs) in enumerate(group):
            layer, root = dep.target.module, group[i].root_idxs
            if dep.handler != tp.prune_batchnorm_out_channels or not layer.affine or layer.weight.grad is None \
                    or any(r is None for r in root):
                continue
            w = layer.weight.detach()[idxs] * layer.weight.grad[idxs]
            norms.scatter_add_(0, torch.as_tensor(root, dtype=torch.long), w.abs().float())
            found = True
        if base is None and not found:
            return None
        total = norms + (base.float() if base is not None else 0.0)
        return total / total.mean().clamp(min=1e-12)


@register_criterion("taylor", needs_data=True)
def _taylor(model: nn.Module, calib: Calibration | None, seed: int):
    """First-order Taylor |w * dL/dw| summed over the group's conv/linear/BatchNorm weights (Molchanov et al. 2019), on calibration data."""
    accumulate_gradients(model, calib)
    return _GroupTaylor()
