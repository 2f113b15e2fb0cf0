"""Progressive pruning during training toward a MACs target with learnable per-group thresholds,
after "LAPP: Layer Adaptive Progressive Pruning for Compressing CNNs from Scratch" (Zhai et al.).

What is implemented:
- Every prunable dependency group g gets a learnable threshold t_g. Channel scores s are the
  group's BatchNorm |gamma| (L1 of the root's weights where a group has no BatchNorm), recomputed
  every step and normalised by the group mean, so importance can change as training goes.
- Soft masks sigmoid((s - t_g) / tau) multiply the outputs of the group's norm layers (or its
  producing conv/linear layers), so the task loss reaches the thresholds.
- A MACs constraint: the expected MACs of the masked network (per-layer MACs x kept fractions of
  its input and output groups, differentiable in the masks) must not exceed a budget that falls
  from 1 to the target over the first `prune_fraction` of training (progressive);
  loss += lam * relu(expected - budget)^2.
- At the end the channels are removed for real (dependency-graph pruning; a layer always keeps
  >= 1 - max_layer_prune of its channels) and the hooks are gone. A hard cut at mask 0.5 does not
  give the MACs the soft masks promised (on the test CNN: 0.36 expected, 0.55-0.64 measured for a
  0.5 target), so every learned threshold is shifted by one common offset, found by measuring real
  pruned copies (search.search_structural), until the measured MACs ratio meets the target. The
  learned thresholds still decide how the cut is shared between layers; `threshold_ratio` in the
  result is what the unshifted thresholds would have given.
Not implemented: the paper's lightweight bypass branch added to each pruned convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from slimkit.compress.prune.adapters import analyse_model, classifier_layers
from slimkit.compress.prune.criteria import build_importance
from slimkit.compress.prune.measure import count_macs, count_params
from slimkit.compress.prune.search import estimate, search_structural
from slimkit.compress.prune.structured import GroupPlan, apply_plan, layer_stats, plan_groups
from slimkit.compress.prune.training import finetune
from slimkit.engine.hooks import Hook, TrainState

__all__ = ["LAPP", "lapp_train_"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class LAPP(Hook):
    """Learnable-threshold progressive pruning of one model, as a hook of engine.fit (see module doc).

    extra_loss adds the MACs penalty to every step's loss; on_step_end steps the thresholds'
    own optimizer (they are not model parameters, so fit's optimizer never sees them)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, target: float, total_steps: int,
                 tau: float = 0.25, lam: float = 20.0, prune_fraction: float = 0.5, max_layer_prune: float = 0.9) -> None:
        model.eval()
        heads = classifier_layers(model, model(example_inputs[:1]).shape[-1])
        self.plan = plan_groups(model, example_inputs[:1], build_importance("l1", model), heads, [], analyse_model(model))
        self.stats = layer_stats(model, example_inputs[:1])
        self.model, self.target, self.tau, self.lam = model, target, tau, lam
        self.total, self.prune_steps, self.step = total_steps, max(1, int(prune_fraction * total_steps)), 0
        self.min_keep = 1.0 - max_layer_prune
        self.thresholds = nn.Parameter(torch.full((len(self.plan.groups),), 0.5))
        self.opt = torch.optim.Adam([self.thresholds], lr=0.05)
        self._masked = [self._mask_modules(g) for g in self.plan.groups]
        self._handles = [m.register_forward_hook(self._hook(i, g)) for i, (g, mods) in
                         enumerate(zip(self.plan.groups, self._masked)) for m in mods]
        self.conv_macs = sum(s["macs"] for s in self.stats.values())

    def _whole(self, g: GroupPlan) -> list[nn.Module]:
        return [self.model.get_submodule(n) for n, kind, c in g.dims if kind == "out" and c == g.channels]

    def _mask_modules(self, g: GroupPlan) -> list[nn.Module]:
        whole = self._whole(g)
        return [m for m in whole if isinstance(m, _NORMS)] or whole

    def scores(self, g: GroupPlan, modules: list[nn.Module]) -> torch.Tensor:
        """|gamma| of the group's norms times the L1 norm of its producing filters, per channel."""
        raw = torch.ones(g.channels)
        norms = [m for m in modules if isinstance(m, _NORMS) and m.weight is not None]
        if norms:
            raw = raw * torch.stack([m.weight.detach().abs() for m in norms]).mean(0)
        producers = [m for m in self._whole(g) if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        if producers:
            raw = raw * torch.stack([m.weight.detach().abs().flatten(1).sum(1) for m in producers]).mean(0)
        raw = raw.view(g.ch_groups, -1).mean(0) if g.ch_groups > 1 else raw
        return raw / raw.mean().clamp(min=1e-12)

    def masks(self, i: int) -> torch.Tensor:
        g = self.plan.groups[i]
        soft = torch.sigmoid((self.scores(g, self._masked[i]) - self.thresholds[i]) / self.tau)
        return soft.repeat(g.ch_groups)  # slot j covers channels j + k * size

    def _hook(self, i: int, g: GroupPlan):
        def hook(module, _inputs, out):
            if not self.model.training or not isinstance(out, torch.Tensor):
                return None
            shape = [1] * out.dim()
            dim = 1 if not isinstance(module, (nn.Linear, nn.LayerNorm)) else out.dim() - 1
            shape[dim] = -1
            return out * self.masks(i).view(shape)
        return hook

    def expected_macs_ratio(self) -> torch.Tensor:
        removed: dict[tuple[str, str], torch.Tensor] = {}
        for i, g in enumerate(self.plan.groups):
            frac = 1.0 - self.masks(i)[: g.size].mean()
            for name, kind, count in g.dims:
                removed[(name, kind)] = removed.get((name, kind), 0.0) + frac * count
        total = torch.zeros(())
        for name, s in self.stats.items():
            f_out = 1 - removed.get((name, "out"), 0.0) / s["out"] if s["out"] else 1.0
            f_in = 1 - removed.get((name, "in"), 0.0) / s["in"] if s["in"] else 1.0
            total = total + s["macs"] * (torch.minimum(torch.as_tensor(f_in), torch.as_tensor(f_out))
                                         if s["depthwise"] else f_in * f_out)
        return total / max(self.conv_macs, 1)

    def budget(self) -> float:
        progress = min(1.0, self.step / self.prune_steps)
        return 1.0 - (1.0 - self.target) * progress

    def loss(self) -> torch.Tensor:
        over = torch.relu(self.expected_macs_ratio() - self.budget())
        return self.lam * over * over

    def extra_loss(self, state: TrainState) -> torch.Tensor:
        return self.loss()

    def on_step_end(self, state: TrainState) -> None:
        self.step = state.global_step
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _shifted(self, margins: list[torch.Tensor]):
        """Kept slots per group when every threshold moves by one offset; level 0 keeps all, 1 the minimum."""
        lo = min(float(m.min()) for m in margins) - 1e-6
        hi = max(float(m.max()) for m in margins) + 1e-6

        def keeps(level: float) -> list[int]:
            offset = lo + level * (hi - lo)
            return [min(g.size, max(int((m > offset).sum()), 1, math.ceil(self.min_keep * g.size)))
                    for g, m in zip(self.plan.groups, margins)]

        return keeps, -lo / (hi - lo)

    def finalize(self, example_inputs: torch.Tensor) -> list[int]:
        """Remove channels for real so the measured MACs meet the target; returns the kept slots per group."""
        for h in self._handles:
            h.remove()
        x = example_inputs[:1]
        with torch.no_grad():
            margins = [self.scores(g, self._masked[i]) - self.thresholds[i] for i, g in enumerate(self.plan.groups)]
        for i, g in enumerate(self.plan.groups):
            g.imp = self.scores(g, self._masked[i])  # the channels above their threshold go last
        alloc, unshifted = self._shifted(margins)
        base = {"macs": count_macs(self.model, x), "params": count_params(self.model)}
        self.threshold_ratio = estimate(self.plan, alloc(unshifted), self.stats, base)["macs"] / base["macs"]
        best, _ = search_structural(self.model, x, self.plan, self.stats, base, "macs", self.target, alloc, 1.0,
                                    check=lambda _pruned: None)
        apply_plan(self.model, x, self.plan, best.keeps)
        return best.keeps


def lapp_train_(model: nn.Module, train: Dataset, target: float, epochs: float, example_inputs: torch.Tensor,
                *, lr: float = 0.01, batch_size: int = 64, seed: int = 0, teacher: nn.Module | None = None) -> dict:
    """Train `model` in place from its current weights while LAPP prunes it toward `target` x MACs
    (distilling from `teacher` when given)."""
    before = count_macs(model, example_inputs[:1])
    steps = max(1, math.ceil(epochs * math.ceil(len(train) / batch_size)))
    lapp = LAPP(model, example_inputs, target, steps)
    info = finetune(model, train, epochs, lr=lr, batch_size=batch_size, hooks=[lapp], seed=seed, teacher=teacher)
    with torch.no_grad():
        expected = float(lapp.expected_macs_ratio())  # soft-mask estimate, before the real cut
    keeps = lapp.finalize(example_inputs)
    model.eval()
    return {"macs_ratio": count_macs(model, example_inputs[:1]) / before, "loss": info["loss"],
            "expected_ratio_at_end": expected, "threshold_ratio": lapp.threshold_ratio, "keeps": keeps}
