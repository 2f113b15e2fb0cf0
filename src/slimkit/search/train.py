"""Supernet training through slimkit.engine.fit: the sandwich rule as a hook.

fit() runs the largest child on each batch (the hook sets it active before the step); the hook's
extra_loss then runs the smallest open child and `n_random` random ones on the same batch, each
distilled in place from the largest child's (detached) logits, and fit() back-propagates the sum in
one step (BigNAS's sandwich rule + in-place distillation). Shrinking is delayed (DεpS): for the first
`delay` of the steps only the full network trains; the smaller choices then open over `ramp` of them.
Children are sampled from a generator seeded by the global step, so a resumed run draws the same ones.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from slimkit.engine.hooks import Hook, TrainState
from slimkit.search.space import Arch, SearchSpace
from slimkit.search.supernet import Supernet

__all__ = ["SandwichConfig", "SandwichHook", "resize_to", "open_fraction"]


@dataclass
class SandwichConfig:
    n_random: int = 2
    delay: float = 0.25  # fraction of the steps that trains the full network alone (DεpS: ~0.5 of a long run)
    ramp: float = 0.25  # fraction of the steps over which the smaller choices open
    temperature: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_fraction(step: int, total: int, delay: float, ramp: float) -> float:
    """How much of each choice list is open at `step` (0: only the largest; 1: all)."""
    t = step / max(1, total)
    if t < delay:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (t - delay) / ramp)


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Input at a child's resolution (bilinear from the data's largest)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def _soft_ce(logits: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return -(F.softmax(teacher / t, 1) * F.log_softmax(logits / t, 1)).sum(1).mean() * t * t


class SandwichHook(Hook):
    def __init__(self, supernet: Supernet, config: SandwichConfig | None = None):
        self.net, self.space, self.cfg = supernet, supernet.space, config or SandwichConfig()
        self.last_children: list[Arch] = []

    def on_step_begin(self, state: TrainState) -> None:
        self.net.set_active(self.space.largest())

    def children(self, state: TrainState) -> list[Arch]:
        frac = open_fraction(state.global_step, state.total_steps, self.cfg.delay, self.cfg.ramp)
        if frac == 0.0:
            return []
        rng = random.Random(self.cfg.seed * 1_000_003 + state.global_step)
        picks = [self.space.smallest(frac)] + [self.space.sample(rng, frac) for _ in range(self.cfg.n_random)]
        largest = self.space.largest().key()
        return [a for a in picks if a.key() != largest]

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        self.last_children = self.children(state)
        if not self.last_children:
            return None
        teacher = state.outputs.float()
        total = None
        for arch in self.last_children:
            self.net.set_active(arch)
            logits = self.net(resize_to(state.inputs, arch.resolution)).float()
            term = _soft_ce(logits, teacher, self.cfg.temperature)
            total = term if total is None else total + term
        self.net.set_active(self.space.largest())
        return total


def check_space_data(space: SearchSpace, in_chans: int, num_classes: int) -> SearchSpace:
    """The space resolved for the data: its classes (the head follows the data) and channels."""
    return space.model_copy(update={"num_classes": int(num_classes), "in_chans": int(in_chans)})


SPACE_FILE = "space.yaml"


def train_supernet(space: SearchSpace, data: Any, config: Any, out_dir: Any, *, sandwich: SandwichConfig | None = None,
                   resume: bool = False, overwrite: bool = False, progress: bool = True,
                   hooks: tuple[Hook, ...] = (), sorted_levels: int | None = None) -> Any:
    """Train a new supernet of `space` on `data` (a DataBundle at the space's largest resolution) via fit().

    `out_dir` ends holding space.yaml, the supernet as a model directory (load it with load_supernet),
    fit's checkpoint/log/metrics, and sandwich.json. Returns fit's FitResult. With `sorted_levels`, a
    SortedNet of that many nested levels instead (sandwich.n_random levels sampled per step), saved as
    `timm:slimkit_sorted_net`: load_model(out_dir, budget=...) picks a level."""
    from pathlib import Path

    from slimkit.engine.fit import fit
    from slimkit.errors import BadInputError
    from slimkit.utils.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    sandwich = sandwich or SandwichConfig(seed=config.seed)
    if resume and (out / SPACE_FILE).is_file():
        stored = SearchSpace.from_dict(_read_yaml(out / SPACE_FILE), str(out / SPACE_FILE))
        if stored.model_dump() != space.model_dump():
            raise BadInputError(f"cannot resume {out}: its {SPACE_FILE} is a different space ({stored.name})")
        before = json.loads((out / "sandwich.json").read_text()).get("sorted_levels") if (out / "sandwich.json").is_file() else None
        if before != sorted_levels:
            raise BadInputError(f"cannot resume {out}: it was trained with sorted levels {before}, not {sorted_levels}")
    torch.manual_seed(config.seed)  # the initial weights follow the seed like everything else in the run
    net, hook, info = _net_and_hook(space, sandwich, sorted_levels)
    from slimkit.engine.outputs import prepare_out_dir

    prepare_out_dir(out, resume=resume, overwrite=overwrite)
    atomic_write_text(out / SPACE_FILE, space.to_yaml())
    atomic_write_json(out / "sandwich.json", {**sandwich.to_dict(), "sorted_levels": sorted_levels})
    return fit(net, data, config, hooks=[hook, *hooks], out_dir=out, resume=resume, overwrite=overwrite, progress=progress,
               info=info, extra_metrics={"search": {"space": space.name, "sandwich": sandwich.to_dict(),
                                                    "sorted_levels": sorted_levels}})


def _net_and_hook(space: SearchSpace, sandwich: SandwichConfig, sorted_levels: int | None) -> tuple[Any, Hook, Any]:
    """The supernet (or SortedNet), its training hook, and the ModelInfo its model directory records."""
    if sorted_levels is None:
        net = Supernet(space)
        return net, SandwichHook(net, sandwich), None
    from slimkit.models.resolve import ModelInfo
    from slimkit.search.sorted import SortedHook, SortedNet, ladder

    levels = ladder(space, sorted_levels)
    net = SortedNet(space, levels)
    info = ModelInfo("timm", "slimkit_sorted_net", {"space": space.model_dump(), "levels": [a.model_dump() for a in levels]},
                     input_size=net.input_size, num_classes=space.num_classes)
    return net, SortedHook(net, max(1, sandwich.n_random), sandwich.seed), info


def _read_yaml(path: Any) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def load_supernet(run_dir: Any) -> tuple[Supernet, Any]:
    """The trained supernet of a `search train` run directory (eval mode) and its ModelInfo."""
    from pathlib import Path

    from slimkit.errors import BadInputError
    from slimkit.models.modeldir import is_model_dir, load_model_dir

    run_dir = Path(run_dir)
    if not (run_dir / SPACE_FILE).is_file() or not is_model_dir(run_dir):
        raise BadInputError(f"{run_dir} is not a finished `slimkit search train` run (no {SPACE_FILE} or model)")
    space = SearchSpace.from_dict(_read_yaml(run_dir / SPACE_FILE), str(run_dir / SPACE_FILE))
    from slimkit.models.modeldir import read_architecture

    if read_architecture(run_dir)["model"].get("name") == "slimkit_sorted_net":  # rebuilt by name: a SortedNet
        return load_model_dir(run_dir)
    net, info = load_model_dir(run_dir, base=Supernet(space))
    return net, info
