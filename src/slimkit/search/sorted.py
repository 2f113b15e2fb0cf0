"""SortedNet (Valipour et al.): nested sub-models trained together, kept in one model directory, one chosen at load.

The sub-models are a ladder of children of a space, sorted so that each one's weights are a slice of
the next one's: every choice (depth, kernel, expand, width, resolution) is non-decreasing along the
ladder, and the supernet shares weights by leading slices, so level i is nested in level i+1. Each
training step runs the largest level and `n_sampled` levels drawn at random (SortedNet's probabilistic
sorted training), each on the task loss, summed into one optimizer step.

The run directory is an ordinary model directory of `timm:slimkit_sorted_net` (space + ladder as kwargs).
Loaded plainly it is the whole `SortedNet` (switch with `set_level`: dynamic inference); loaded with a
budget (`load_model(DIR, budget="macs=0.5")`, or `DIR@macs=0.5` wherever a model is named) it is the
largest level within the budget, extracted as a plain ChildNet.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model

from slimkit.engine.hooks import Hook, TrainState
from slimkit.errors import BadInputError
from slimkit.search.child import ChildNet
from slimkit.search.space import Arch, SearchSpace
from slimkit.search.supernet import Supernet
from slimkit.search.train import resize_to

__all__ = ["ladder", "SortedNet", "SortedHook", "slimkit_sorted_net"]


def ladder(space: SearchSpace, levels: int) -> list[Arch]:
    """`levels` nested children from the smallest to the largest (fewer if the space has fewer distinct steps)."""
    if levels < 2:
        raise BadInputError(f"a SortedNet needs at least 2 levels, got {levels}")

    def at(options: list, t: float) -> Any:
        return options[round(t * (len(options) - 1))]

    archs: list[Arch] = []
    for i in range(levels):
        t = i / (levels - 1)
        depths = [at(s.depths, t) for s in space.stages]
        arch = Arch(resolution=at(space.resolutions, t), width=at(space.widths, t), depths=depths,
                    kernels=[[at(space.kernels, t)] * d for d in depths],
                    expands=[[at(space.expands, t)] * d for d in depths],
                    attention=space.attention_for(depths, lambda options, t=t: at(options, t)))
        if not archs or arch != archs[-1]:
            archs.append(arch)
    return archs


class SortedNet(Supernet):
    """A supernet restricted to a sorted ladder of nested sub-models; forward() runs the active level."""

    def __init__(self, space: SearchSpace, levels: list[Arch]):
        super().__init__(space)
        if len(levels) < 1:
            raise BadInputError("a SortedNet needs at least one level")
        self.levels = [space.validate_arch(a) for a in levels]
        self.level = len(self.levels) - 1
        self.set_active(self.levels[-1])
        self.input_size = (space.in_chans, self.levels[-1].resolution, self.levels[-1].resolution)

    def set_level(self, level: int) -> None:
        """Changes which nested sub-model forward() runs (the weights are untouched)."""
        self.level = self.choose(f"level={level}")
        self.set_active(self.levels[self.level])

    def costs(self) -> list[dict[str, float]]:
        """Exact MACs (batch 1, the level's resolution) and params of each level, smallest first."""
        from slimkit.profile import count_macs

        out = []
        for arch in self.levels:
            child = self.extract(arch).eval()
            x = torch.zeros(1, self.space.in_chans, arch.resolution, arch.resolution)
            out.append({"macs": float(count_macs(child, x).total),
                        "params": float(sum(p.numel() for p in child.parameters()))})
        return out

    def choose(self, budget: str) -> int:
        """The largest level within `budget` (macs=F, params=F or size=F: a fraction of the largest level's),
        or `level=I` by index (0: the smallest)."""
        from slimkit.compress.budget import parse_budget

        kind, _, value = str(budget).partition("=")
        if kind.strip().lower() == "level":
            try:
                level = int(value)
            except ValueError:
                raise BadInputError(f"malformed budget {budget!r}: level=I takes an integer") from None
            if not -len(self.levels) <= level < len(self.levels):
                raise BadInputError(f"level {level} out of range: this SortedNet has {len(self.levels)} levels")
            return level % len(self.levels)
        b = parse_budget(budget)
        if b.kind == "latency":
            raise BadInputError("a SortedNet chooses by macs=, params= or size= at load time (no latency table here)")
        key = "macs" if b.kind == "macs" else "params"  # weight bytes (size) scale with params at one dtype
        costs = self.costs()
        fits = [i for i, c in enumerate(costs) if b.met(costs[-1][key], c[key])]
        if not fits:
            raise BadInputError(f"no sub-model within {budget}: the smallest has {costs[0][key] / costs[-1][key]:.3f} "
                                f"of the largest's {key}")
        return fits[-1]

    @torch.no_grad()
    def at_budget(self, budget: str) -> tuple[ChildNet, dict[str, Any]]:
        """A new plain ChildNet of the largest level within `budget`, and what was chosen (the net is unchanged)."""
        level = self.choose(budget)
        arch = self.levels[level]
        child = self.extract(arch).eval()
        size = (self.space.in_chans, arch.resolution, arch.resolution)
        # the child's own ModelInfo changes: it is rebuilt by name as a plain searched child
        info = {"name": "slimkit_nas_child", "kwargs": {"arch": child.spec}, "input_size": size}
        return child, {"level": level, "levels": len(self.levels), "budget": budget, "arch": arch.model_dump(),
                       "info": info}


class SortedHook(Hook):
    """Each step: the largest level (fit's own forward) plus `n_sampled` random smaller levels on the task loss."""

    def __init__(self, net: SortedNet, n_sampled: int = 1, seed: int = 0):
        self.net, self.n_sampled, self.seed = net, n_sampled, seed

    def on_step_begin(self, state: TrainState) -> None:
        self.net.set_level(-1)

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        rng = random.Random(self.seed * 1_000_003 + state.global_step)  # a resumed run draws the same levels
        smaller = range(len(self.net.levels) - 1)
        picks = [rng.choice(smaller) for _ in range(self.n_sampled)] if smaller else []
        total = None
        for level in picks:
            self.net.set_level(level)
            arch = self.net.levels[level]
            term = F.cross_entropy(self.net(resize_to(state.inputs, arch.resolution)).float(), state.targets)
            total = term if total is None else total + term
        self.net.set_level(-1)
        return total


@register_model
def slimkit_sorted_net(pretrained: bool = False, space: dict | None = None, levels: list[dict] | None = None,
                       **kwargs: Any) -> SortedNet:
    """Nested sub-models trained by `slimkit search train --sorted N` (space and ladder as its model dir records)."""
    if space is None or not levels:
        raise ValueError("slimkit_sorted_net needs space=<space> and levels=[<arch>, ...] (it is built from a run)")
    sp = SearchSpace.from_dict(space, "slimkit_sorted_net space")
    for key in ("num_classes", "in_chans"):
        if kwargs.get(key) is not None and kwargs[key] != getattr(sp, key):
            raise ValueError(f"slimkit_sorted_net: {key}={kwargs[key]} differs from the trained {getattr(sp, key)}")
    net = SortedNet(sp, [Arch.model_validate(a) for a in levels])
    c = sp.in_chans
    net.pretrained_cfg = {"input_size": net.input_size, "mean": (0.5,) * c, "std": (0.5,) * c,
                          "num_classes": sp.num_classes}
    net.num_classes = sp.num_classes
    return net
