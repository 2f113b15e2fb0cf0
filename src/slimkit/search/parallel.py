"""Scale-out of independent trials (a child trained alone, a candidate evaluated) through Ray.

`run_trials(fn, items, workers=N)` returns [fn(item) for item in items], in order. With workers <= 1
it is exactly that loop, in this process, and Ray is never imported: everything runs without Ray.
With workers >= 2 each item is a Ray task with one CPU (torch limited to one thread inside it, so N
tasks do not fight over the cores); Ray is started as a local cluster of `workers` CPUs unless the
process is already connected to one (`ray.init(address=...)` beforehand, or RAY_ADDRESS).

Latency timing is never spread this way: tasks running side by side would time each other's load.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from slimkit.errors import BadInputError

__all__ = ["run_trials", "ray_available", "require_ray"]


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _one_thread(fn: Callable[[Any], Any], item: Any) -> Any:
    import torch

    torch.set_num_threads(1)
    return fn(item)


def require_ray(workers: int) -> None:
    """A one-line error, before any work starts, when `workers` >= 2 asks for Ray and it is absent."""
    if workers > 1 and not ray_available():
        raise BadInputError(f"--workers {workers} runs trials through Ray, which is not installed: "
                            "pip install 'slimkit[search-ray]' (or use --workers 1)")


def _ray(workers: int) -> Any:
    require_ray(workers)
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    return ray


def run_trials(fn: Callable[[Any], Any], items: Sequence[Any], *, workers: int = 1,
               progress: Callable[[], None] | None = None) -> list[Any]:
    """fn(item) for every item, in the items' order; in parallel Ray tasks when workers >= 2."""
    if workers <= 1:
        out = []
        for item in items:
            out.append(fn(item))
            if progress:
                progress()
        return out
    ray = _ray(workers)
    task = ray.remote(num_cpus=1)(_one_thread)
    fn_ref = ray.put(fn)  # shipped once (data, supernet), not once per task
    pending = {task.remote(fn_ref, item): i for i, item in enumerate(items)}
    results: list[Any] = [None] * len(items)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
            if progress:
                progress()
    return results
