"""Search trials (proxy studies, each generation's candidates) run the same with and without Ray; a local
2-worker Ray cluster when Ray is installed."""

from __future__ import annotations

import os

import pytest
import torch

from slimkit.errors import BadInputError
from slimkit.search.parallel import ray_available, require_ray, run_trials


def _pid_and_square(x: int) -> tuple[int, int, int]:
    return os.getpid(), x * x, torch.get_num_threads()


def test_trials_run_in_order_here_without_ray():
    ticks = []
    got = run_trials(_pid_and_square, [3, 1, 2], progress=lambda: ticks.append(1))
    assert [g[1] for g in got] == [9, 1, 4] and {g[0] for g in got} == {os.getpid()} and len(ticks) == 3


def test_missing_ray_is_a_one_line_error(monkeypatch):
    import slimkit.search.parallel as parallel

    monkeypatch.setattr(parallel, "ray_available", lambda: False)
    require_ray(1)  # one worker never needs Ray
    with pytest.raises(BadInputError, match=r"slimkit\[search-ray\]"):
        run_trials(_pid_and_square, [1, 2], workers=2)


@pytest.mark.slow  # a Ray cluster takes ~1 min to start on the shared 2 cores
@pytest.mark.skipif(not ray_available(), reason="ray not installed (pip install 'slimkit[search-ray]')")
def test_local_two_worker_ray_cluster_gives_the_same_results():
    import ray

    from slimkit.search.rank import proxy_study, sample_distinct
    from slimkit.search.space import load_space

    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        got = run_trials(_pid_and_square, list(range(6)), workers=2)
        assert [g[1] for g in got] == [i * i for i in range(6)]
        assert os.getpid() not in {g[0] for g in got} and {g[2] for g in got} == {1}  # Ray tasks, one thread each
        space = load_space("tiny")
        archs = sample_distinct(space, 4, seed=2)
        x, y = torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)

        def acc(a):
            return 0.1 * a.width + 0.01 * a.resolution + 0.001 * sum(a.depths)

        here = proxy_study(space, archs, acc, x, y, names=["deepmad", "params"])
        there = proxy_study(space, archs, acc, x, y, names=["deepmad", "params"], workers=2)
        assert here == there
        from slimkit.search.evolution import EvolutionConfig, evolve
        from test_search import fake_table

        table = fake_table(space)
        runs = [evolve(space, acc, table.predict_ms, table.predict_ms(space.largest()), workers=n,
                       config=EvolutionConfig(6, 2, seed=3)) for n in (1, 2)]
        assert [c.to_dict() for c in runs[0]] == [c.to_dict() for c in runs[1]]  # the same search, in parallel
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
