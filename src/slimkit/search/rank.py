"""How well do training-free scores rank architectures? Kendall tau against trained accuracy on sampled children.

`proxy_study` scores each child with every proxy of `slimkit.search.proxies` (MACs and params among them:
the honest baselines) and ranks them against an accuracy function: a trained supernet's children
(BN recalibrated, `ChildEvaluator.accuracy`) or the same architectures trained alone (`train_alone`).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch

from slimkit.search.child import ChildNet, child_spec
from slimkit.search.proxies import rank_correlation, score
from slimkit.search.space import Arch, SearchSpace
from slimkit.search.train import resize_to

__all__ = ["sample_distinct", "proxy_batch", "proxy_study"]


def sample_distinct(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """`n` distinct random children (fewer only if the space holds fewer)."""
    rng, seen, archs = random.Random(seed), set(), []
    for _ in range(50 * n):
        arch = space.sample(rng)
        if arch.key() not in seen:
            seen.add(arch.key())
            archs.append(arch)
        if len(archs) == n:
            break
    return archs


def proxy_batch(dataset: Any, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images and labels of `dataset`: the one batch every proxy sees."""
    n = min(n, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)]), torch.tensor([int(dataset[i][1]) for i in range(n)])


def proxy_study(space: SearchSpace, archs: list[Arch], accuracy: Callable[[Arch], float], x: torch.Tensor,
                y: torch.Tensor, *, names: list[str] | None = None, seed: int = 0, workers: int = 1,
                progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Every proxy's score and the accuracy of each arch, and each proxy's Kendall tau-b (best first).
    The accuracies (the costly part: trainings or evaluations) run as `workers` parallel Ray tasks if >= 2."""
    from slimkit.search.parallel import run_trials

    scores = [score(lambda a=arch: ChildNet(child_spec(space, a)), resize_to(x, arch.resolution), y, names, seed)
              for arch in archs]
    accs = run_trials(accuracy, archs, workers=workers, progress=progress)
    rows = [{"arch": a.model_dump(), "accuracy": float(acc), "scores": s} for a, acc, s in zip(archs, accs, scores)]
    tau = rank_correlation([r["scores"] for r in rows], [r["accuracy"] for r in rows])
    tau = dict(sorted(tau.items(), key=lambda kv: -(kv[1] if kv[1] == kv[1] else -2.0)))  # NaN (constant) last
    return {"n": len(rows), "kendall_tau": tau, "rows": rows}
