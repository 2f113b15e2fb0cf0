"""slimkit search: spaces, exact child extraction, latency-table lookup, sandwich training, deterministic search."""

from __future__ import annotations

import json
import random

import logging

import pytest
import torch

from slimkit.engine.hooks import Hook
from slimkit.errors import BadInputError
from slimkit.search.evolution import EvolutionConfig, evolve, pareto_front, Candidate
from slimkit.search.latency import arch_parts, conditions, space_parts
from slimkit.search.space import Arch, SearchSpace, load_space
from slimkit.search.supernet import Supernet
from slimkit.search.table import LatencyTable
from slimkit.search.train import SandwichHook, open_fraction


@pytest.fixture
def tiny() -> SearchSpace:
    return load_space("tiny")


def _randomize_bn(net: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)


def fake_table(space: SearchSpace) -> LatencyTable:
    """A table with known figures: each part costs 0.001 ms per character of its key."""
    entries = {k: {"median_ms": len(k) * 1e-3, "iqr_ms": 0.0, "p90_ms": 0.0, "min_ms": len(k) * 1e-4, "repetitions": 1}
               for k in space_parts(space)}
    overhead = {"median_ms": 0.002, "min_ms": 0.001}
    return LatencyTable(space, conditions(torch.get_num_threads(), 1, 1), entries, overhead, 0.5, 0.01)


def test_space_yaml_round_trip_and_user_file(tiny, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(tiny.to_yaml().replace("name: tiny", "name: mine"))
    mine = load_space(path)
    assert mine.name == "mine" and mine.model_dump() == {**tiny.model_dump(), "name": "mine"}
    # 2 widths x 2 resolutions x per stage (4 + 4^2 block choices)^2 stages = 4 * 20 * 20
    assert tiny.size() == 1600
    with pytest.raises(BadInputError, match="unknown search space"):
        load_space("nope")
    path.write_text(tiny.to_yaml().replace("kernels:\n- 3", "kernels:\n- 4"))
    with pytest.raises(BadInputError, match="kernels must be odd"):
        load_space(path)


def test_fraction_opens_choices_progressively(tiny):
    assert open_fraction(0, 100, 0.25, 0.5) == 0.0 and open_fraction(50, 100, 0.25, 0.5) == 0.5
    assert open_fraction(90, 100, 0.25, 0.5) == 1.0
    assert tiny.smallest(0.0) == tiny.largest()
    half = tiny.smallest(0.5)  # half of each two-option list: still the largest
    assert half == tiny.largest()
    assert tiny.smallest(1.0).resolution == 12 and tiny.smallest(1.0).depths == [1, 1]
    rng = random.Random(0)
    assert all(tiny.sample(rng, 0.0) == tiny.largest() for _ in range(5))


def assert_children_match_supernet(space: SearchSpace, archs: list[Arch]) -> None:
    """Each extracted child's outputs equal the supernet's run with its choices (random BN statistics)."""
    net = Supernet(space)
    _randomize_bn(net)
    net.eval()
    for arch in archs:
        net.set_active(arch)
        x = torch.randn(3, 1, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(net(x), net.extract(arch).eval()(x))


def test_extracted_child_matches_supernet_exactly(tiny):
    rng = random.Random(3)
    assert_children_match_supernet(tiny, [tiny.largest(), tiny.smallest()] + [tiny.sample(rng) for _ in range(3)])


def test_child_model_dir_loads_by_name(tiny, tmp_path):
    from slimkit.models import load_model
    from slimkit.models.resolve import ModelInfo
    from slimkit.search.evaluate import save_child

    net = Supernet(tiny)
    _randomize_bn(net)
    arch = tiny.sample(random.Random(1))
    child = net.eval().extract(arch).eval()
    save_child(child, ModelInfo("module", "Supernet", num_classes=10), tmp_path / "c", {"arch": arch.model_dump()})
    loaded, info = load_model(str(tmp_path / "c"))
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    assert info.spec == "timm:slimkit_nas_child" and info.input_size == (1, arch.resolution, arch.resolution)
    assert torch.equal(loaded(x), child(x))


def test_table_lookup_reproduces_stored_figures(tiny, tmp_path):
    table = fake_table(tiny)
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.entries == table.entries
    arch = tiny.smallest()
    parts = arch_parts(tiny, arch)
    assert parts[0] == "stem:1-4-s2@12" and parts[-1] == "head:8-16-10@3"
    assert all(again.lookup(k) == len(k) * 1e-3 for k in parts)
    raw = sum(len(k) * 1e-3 for k in parts) - (len(parts) - 1) * 0.002
    assert again.predict_ms(arch) == pytest.approx(0.5 * raw + 0.01, abs=1e-12)
    assert again.check_conditions() == []
    again.statistic = "min"
    assert again.predict_ms(arch) == pytest.approx(0.5 * (raw / 10 - (len(parts) - 1) * 0.0008) + 0.01, abs=1e-12)
    with pytest.raises(BadInputError, match="another space"):
        again.lookup("block:999-1-1-k3-s1-r0@4")


def test_table_from_another_machine_warns(tiny, tmp_path, caplog):
    table = fake_table(tiny)
    table.conditions = {**table.conditions, "cpu": "Some Other CPU", "threads": 64}
    logger = logging.getLogger("slimkit.search.table")
    logger.addHandler(caplog.handler)  # directly: another test's library may have changed the root's handlers
    try:
        with caplog.at_level(logging.WARNING, logger="slimkit.search.table"):
            problems = table.check_conditions(1)
    finally:
        logger.removeHandler(caplog.handler)
    assert any(p.startswith("cpu:") for p in problems) and any(p.startswith("threads:") for p in problems)
    assert "measured elsewhere" in caplog.text


def _fake_accuracy(arch: Arch) -> float:
    return 0.5 + 0.01 * sum(sum(k) + sum(e) for k, e in zip(arch.kernels, arch.expands)) + 0.1 * arch.width


def search_twice(space: SearchSpace) -> tuple[list[Candidate], float]:
    """The same seeded search run twice (asserted identical) on a fake table, and its target."""
    table = fake_table(space)
    target = table.predict_ms(space.largest()) * 0.8
    runs = [evolve(space, _fake_accuracy, table.predict_ms, target, config=EvolutionConfig(8, 3, seed=7))
            for _ in range(2)]
    assert [c.arch.key() for c in runs[0]] == [c.arch.key() for c in runs[1]]
    return runs[0], target


def test_search_is_deterministic_and_rejects_impossible_latency(tiny):
    table = fake_table(tiny)
    found, target = search_twice(tiny)
    runs = [found]
    assert [c.reward for c in runs[0]] == sorted((c.reward for c in runs[0]), reverse=True)
    best = runs[0][0]
    assert best.reward == pytest.approx(best.accuracy * (best.latency_ms / target) ** -0.07)
    with pytest.raises(BadInputError, match="no child"):
        evolve(tiny, _fake_accuracy, table.predict_ms, table.predict_ms(tiny.smallest()) / 2)


def test_pareto_front_by_hand():
    a = Arch(resolution=12, width=1.0, depths=[1], kernels=[[3]], expands=[[2]])
    pts = [(0.9, 2.0), (0.8, 1.0), (0.85, 3.0), (0.95, 4.0)]
    cands = [Candidate(a, acc, lat, 0.0, 0) for acc, lat in pts]
    assert [(c.accuracy, c.latency_ms) for c in pareto_front(cands)] == [(0.8, 1.0), (0.9, 2.0), (0.95, 4.0)]


def test_sandwich_children_start_after_the_delay(tiny):
    from slimkit.engine.hooks import TrainState

    hook = SandwichHook(Supernet(tiny))
    state = TrainState(model=None, optimizer=None, scheduler=None, config=None, global_step=10, total_steps=100)
    assert hook.children(state) == []
    state.global_step = 99
    kids = hook.children(state)
    assert kids[0] == tiny.smallest() and len(kids) == 3
    assert [k.key() for k in hook.children(state)] == [k.key() for k in kids]  # seeded by the step


class _StopAfterFirstEpoch(Hook):
    def on_epoch_end(self, state) -> None:
        state.stop_training = True


def test_supernet_training_resumes_exactly(tiny, tmp_path):
    from slimkit.data import load_data
    from slimkit.engine.config import TrainConfig
    from slimkit.search.train import check_space_data, load_supernet, train_supernet

    data = load_data("digits", input_size=(1, 16, 16), train_samples=64, val_samples=32)
    space = check_space_data(tiny, 1, data.num_classes)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3)
    train_supernet(space, data, cfg, tmp_path / "full", progress=False)
    train_supernet(space, data, cfg, tmp_path / "cut", progress=False, hooks=(_StopAfterFirstEpoch(),))
    (tmp_path / "cut" / "architecture.json").unlink()  # as if killed before the end
    train_supernet(space, data, cfg, tmp_path / "cut", resume=True, progress=False)
    full, _ = load_supernet(tmp_path / "full")
    resumed, _ = load_supernet(tmp_path / "cut")
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("event") == "epoch"] == [1, 2]


def test_refit_recovers_a_known_line(tiny):
    from slimkit.search.table import refit

    table = fake_table(tiny)
    rng = random.Random(0)
    archs = [tiny.sample(rng) for _ in range(6)]
    table.scale, table.offset_ms = 1.0, 0.0

    def row(a):  # children that cost exactly 2 x the sum of their parts + 0.5 ms
        table.statistic = "median"
        med = 2 * table.raw_ms(a) + 0.5
        table.statistic = "min"
        return {"arch": a.model_dump(), "median_ms": med, "min_ms": 2 * table.raw_ms(a) + 0.5}

    rows = [row(a) for a in archs]
    table.calibration = {"calibration_children": rows[:4], "validation_children": rows[4:]}
    for stat in ("median", "min"):
        refit(table, stat)
        assert (table.scale, table.offset_ms) == (pytest.approx(2.0), pytest.approx(0.5))
        assert table.calibration["validation"]["max_abs_pct"] == pytest.approx(0.0, abs=1e-9)
