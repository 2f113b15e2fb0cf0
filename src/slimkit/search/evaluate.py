"""Children's accuracy without retraining: extract, recalibrate BatchNorm on training images, evaluate."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from slimkit.search.child import ChildNet, child_spec
from slimkit.search.space import Arch
from slimkit.search.supernet import Supernet
from slimkit.search.train import resize_to

__all__ = ["ChildEvaluator", "recalibrate_bn_", "save_child", "train_alone"]


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Changes `model` in place: its BatchNorm statistics become the exact average over `batches`.

    The shared weights suit every child, but the running statistics collected during training mix all
    children's activations; each child needs its own (BigNAS, Once-for-All)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    model.train(was_training)
    for m, mom in zip(norms, saved):
        m.momentum = mom
    return model


class _Resized(nn.Module):
    def __init__(self, model: nn.Module, resolution: int):
        super().__init__()
        self.model, self.resolution = model, resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(resize_to(x, self.resolution))


class ChildEvaluator:
    """Top-1 of children of a trained supernet on a fixed validation subset (cached by architecture)."""

    def __init__(self, supernet: Supernet, data: Any, *, calib_batches: int = 8, batch_size: int = 128,
                 val_samples: int | None = None, seed: int = 0):
        self.net = supernet.eval()
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(data.train), generator=gen)[: calib_batches * batch_size].tolist()
        loader = DataLoader(Subset(data.train, order), batch_size=batch_size, shuffle=False)
        self.calib = [x for x, _ in loader]
        val = data.val
        if val_samples is not None and val_samples < len(val):
            val = Subset(val, torch.randperm(len(val), generator=gen)[:val_samples].tolist())
        self.val, self.cache = val, {}

    def child(self, arch: Arch) -> ChildNet:
        """A new extracted child with recalibrated BatchNorm, in eval mode."""
        child = self.net.extract(arch)
        recalibrate_bn_(child, [resize_to(x, arch.resolution) for x in self.calib])
        return child.eval()

    def accuracy(self, arch: Arch) -> float:
        from slimkit.engine.evaluate import evaluate

        key = arch.key()
        if key not in self.cache:
            self.cache[key] = float(evaluate(_Resized(self.child(arch), arch.resolution), self.val)["top1"])
        return self.cache[key]


def train_alone(space: Any, arch: Arch, data: Any, config: Any) -> float:
    """Validation top-1 of a new ChildNet of `arch` trained from scratch with `config` (seeded by it)
    through engine.fit, fed at its resolution by the same resize the supernet uses."""
    from slimkit.engine.evaluate import evaluate
    from slimkit.engine.fit import fit

    torch.manual_seed(config.seed)
    net = _Resized(ChildNet(child_spec(space, arch)), arch.resolution)
    fit(net, data, config, progress=False)
    return float(evaluate(net, data.val)["top1"])


def save_child(child: ChildNet, info: Any, path: str | Path, extra: dict[str, Any]) -> Path:
    """Write `child` as an ordinary model directory (timm:slimkit_nas_child + its spec): every slimkit
    command loads it by name, without the supernet."""
    from slimkit.models.modeldir import save_model_dir

    spec = child.spec
    child_info = dataclasses.replace(info, source="timm", name="slimkit_nas_child", kwargs={"arch": spec},
                                     input_size=(spec["in_chans"], spec["resolution"], spec["resolution"]))
    return save_model_dir(child, child_info, path, extra=extra)


def spec_of(supernet: Supernet, arch: Arch) -> dict[str, Any]:
    return child_spec(supernet.space, arch)
