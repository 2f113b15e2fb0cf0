"""Evolutionary search over a space with the MnasNet reward (Tan et al. 2019): ACC * (LAT / T) ** w.

Aging-free regularised evolution, kept simple: a random population, then each generation keeps the
best `parents` by reward and fills the rest with mutated children and crossovers of them. Every random
draw comes from one seeded generator and the scoring functions are deterministic, so a fixed seed gives
the same search.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable

from slimkit.errors import BadInputError
from slimkit.search.space import Arch, SearchSpace
from slimkit.utils.registry import Registry

__all__ = ["EvolutionConfig", "Candidate", "REWARDS", "evolve", "pareto_front", "mutate", "crossover"]

REWARDS: Registry[Callable[[float, float, float, float], float]] = Registry("reward")


@REWARDS.register("mnasnet", description="ACC * (LAT/T)^w on both sides of T (MnasNet's soft constraint)")
def mnasnet_reward(acc: float, lat: float, target: float, w: float) -> float:
    return acc * (lat / target) ** w


@REWARDS.register("hard", description="ACC under T; ACC * (LAT/T)^-1 over it (MnasNet's hard constraint)")
def hard_reward(acc: float, lat: float, target: float, w: float) -> float:
    return acc if lat <= target else acc * (lat / target) ** -1.0


@dataclass
class EvolutionConfig:
    population: int = 16
    generations: int = 6
    parents: int = 4
    mutate_prob: float = 0.2
    crossover_frac: float = 0.25
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    arch: Arch
    accuracy: float
    latency_ms: float  # predicted from the latency table
    reward: float
    generation: int

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.model_dump(), "accuracy": self.accuracy, "predicted_ms": self.latency_ms,
                "reward": self.reward, "generation": self.generation}


def mutate(space: SearchSpace, arch: Arch, rng: random.Random, p: float) -> Arch:
    """Each choice re-drawn with probability p (a new depth keeps the blocks it already had)."""
    def maybe(value: Any, options: list) -> Any:
        return rng.choice(options) if rng.random() < p else value

    depths, kernels, expands, attention = [], [], [], []
    for si, stage in enumerate(space.stages):
        d = maybe(arch.depths[si], stage.depths)
        ks = [maybe(k, space.kernels) for k in arch.kernels[si]] + [rng.choice(space.kernels) for _ in range(d)]
        es = [maybe(e, space.expands) for e in arch.expands[si]] + [rng.choice(space.expands) for _ in range(d)]
        depths.append(d)
        kernels.append(ks[:d])
        expands.append(es[:d])
        if arch.attention is not None:  # drawn only in iRMB spaces: MBConv searches keep their random stream
            old = arch.attention[si]
            attention.append([maybe(old[bi], space.attention_options(si, bi)) if bi < len(old)
                              else rng.choice(space.attention_options(si, bi)) for bi in range(d)])
    return Arch(resolution=maybe(arch.resolution, space.resolutions), width=maybe(arch.width, space.widths),
                depths=depths, kernels=kernels, expands=expands,
                attention=attention if arch.attention is not None else None)


def crossover(a: Arch, b: Arch, rng: random.Random) -> Arch:
    """Global choices and whole stages taken from either parent."""
    stages = [rng.choice((a, b)) for _ in a.depths]
    return Arch(resolution=rng.choice((a, b)).resolution, width=rng.choice((a, b)).width,
                depths=[p.depths[i] for i, p in enumerate(stages)], kernels=[p.kernels[i] for i, p in enumerate(stages)],
                expands=[p.expands[i] for i, p in enumerate(stages)],
                attention=None if a.attention is None else [p.attention[i] for i, p in enumerate(stages)])


def evolve(space: SearchSpace, accuracy: Callable[[Arch], float], latency: Callable[[Arch], float], target_ms: float,
           *, reward: str = "mnasnet", w: float = -0.07, config: EvolutionConfig | None = None,
           progress: Callable[[int, int], None] | None = None, workers: int = 1) -> list[Candidate]:
    """Every candidate scored, best reward first (ties broken by the order they were found). The new
    candidates of each generation are evaluated together: as `workers` parallel Ray tasks if >= 2."""
    from slimkit.search.parallel import run_trials

    cfg = config or EvolutionConfig()
    if target_ms <= 0:
        raise BadInputError(f"latency target must be positive, got {target_ms} ms")
    floor = latency(space.smallest())
    if floor > target_ms:
        raise BadInputError(f"no child of space {space.name!r} reaches {target_ms:g} ms: the smallest is predicted "
                            f"at {floor:.3f} ms on this table")
    score_fn = REWARDS.get(reward)
    rng = random.Random(cfg.seed)
    seen: dict[str, Candidate] = {}

    def score(archs: list[Arch], gen: int) -> list[Candidate]:
        new = list({a.key(): a for a in archs if a.key() not in seen}.values())
        for arch, acc in zip(new, run_trials(accuracy, new, workers=workers)):
            lat = latency(arch)
            seen[arch.key()] = Candidate(arch, acc, lat, score_fn(acc, lat, target_ms, w), gen)
        return [seen[a.key()] for a in archs]

    population = score([space.sample(rng) for _ in range(cfg.population)], 0)
    for gen in range(1, cfg.generations + 1):
        if progress:
            progress(gen, cfg.generations)
        parents = sorted(population, key=lambda c: -c.reward)[: cfg.parents]
        n_cross = int(cfg.crossover_frac * (cfg.population - len(parents)))
        kids = [crossover(rng.choice(parents).arch, rng.choice(parents).arch, rng) for _ in range(n_cross)]
        while len(kids) < cfg.population - len(parents):
            kids.append(mutate(space, rng.choice(parents).arch, rng, cfg.mutate_prob))
        population = parents + score(kids, gen)
    return sorted(seen.values(), key=lambda c: -c.reward)


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both accuracy (higher) and latency (lower), fastest first."""
    ordered = sorted(candidates, key=lambda c: (c.latency_ms, -c.accuracy))
    front, best = [], -1.0
    for c in ordered:
        if c.accuracy > best:
            front.append(c)
            best = c.accuracy
    return front
