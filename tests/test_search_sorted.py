"""SortedNet: a nested ladder of sub-models, one model directory, a budget picks one at load time."""

from __future__ import annotations

import pytest
import torch

from slimkit.errors import BadInputError
from slimkit.search.space import SearchSpace, load_space
from slimkit.search.sorted import SortedNet, ladder
from test_search import _randomize_bn


@pytest.fixture
def three() -> SearchSpace:
    """tiny with three options per choice, so the ladder has three distinct nested levels."""
    data = load_space("tiny").model_dump()
    data.update(kernels=[3, 5, 7], expands=[1, 2, 3], widths=[0.5, 0.75, 1.0], resolutions=[8, 12, 16])
    data["stages"][0]["depths"] = [1, 2, 3]
    return SearchSpace.from_dict(data)


def _nested(small, big) -> bool:
    return (small.resolution <= big.resolution and small.width <= big.width
            and all(a <= b for a, b in zip(small.depths, big.depths))
            and all(max(k) <= min(kb) for k, kb in zip(small.kernels, big.kernels))
            and all(max(e) <= min(eb) for e, eb in zip(small.expands, big.expands)))


def test_ladder_is_sorted_and_nested(three):
    levels = ladder(three, 3)
    assert levels[0] == three.smallest() and levels[-1] == three.largest() and len(levels) == 3
    assert levels[1].width == 0.75 and levels[1].kernels == [[5, 5], [5]] and levels[1].depths == [2, 1]
    assert all(_nested(a, b) for a, b in zip(levels, levels[1:]))
    assert len(ladder(load_space("tiny"), 3)) == 2  # two options per choice: only two distinct levels
    with pytest.raises(BadInputError, match="at least 2 levels"):
        ladder(three, 1)


def _saved(space, tmp_path):
    from slimkit.models.modeldir import save_model_dir
    from slimkit.search.train import _net_and_hook, SandwichConfig

    net, _, info = _net_and_hook(space, SandwichConfig(), 3)
    _randomize_bn(net)
    save_model_dir(net.eval(), info, tmp_path / "sorted")
    return net, tmp_path / "sorted"


def test_each_level_loaded_by_budget_equals_the_supernet_child(three, tmp_path):
    from slimkit.models import load_model

    net, path = _saved(three, tmp_path)
    costs = net.costs()
    assert [c["macs"] for c in costs] == sorted(c["macs"] for c in costs)
    whole, _ = load_model(str(path))
    assert isinstance(whole, SortedNet) and whole.level == 2
    for i, arch in enumerate(net.levels):
        x = torch.randn(2, 1, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(i))
        net.set_active(arch)
        with torch.no_grad():
            expected = net(x)
        budgets = [f"level={i}"] + ([f"macs={(costs[i]['macs'] + 0.5) / costs[-1]['macs']!r}"] if i < 2 else [])
        for budget in budgets:
            child, info = load_model(f"{path}@{budget}")
            assert info.spec == "timm:slimkit_nas_child" and info.input_size == (1, arch.resolution, arch.resolution)
            with torch.no_grad():
                assert torch.equal(child(x), expected)
        whole.set_level(i)  # dynamic inference: the same directory, switched in memory
        with torch.no_grad():
            assert torch.equal(whole(x), expected)


def test_budget_errors(three, tmp_path):
    from slimkit.models import load_model
    from slimkit.models.resolve import ModelInfo
    from slimkit.search.evaluate import save_child

    net, path = _saved(three, tmp_path)
    small = net.costs()[0]["macs"] / net.costs()[-1]["macs"]
    with pytest.raises(BadInputError, match="no sub-model within"):
        load_model(str(path), budget=f"macs={small / 2}")
    with pytest.raises(BadInputError, match="no latency table"):
        load_model(str(path), budget="latency=1ms")
    with pytest.raises(BadInputError, match="out of range"):
        load_model(str(path), budget="level=7")
    save_child(net.extract(net.levels[0]), ModelInfo("module", "Supernet"), tmp_path / "one", {})
    with pytest.raises(BadInputError, match="holds one model"):
        load_model(str(tmp_path / "one"), budget="macs=0.5")
    with pytest.raises(BadInputError, match="is not one"):
        load_model("timm:resnet18", budget="macs=0.5")


def test_sorted_training_writes_a_budget_loadable_run(tmp_path):
    from slimkit.data import load_data
    from slimkit.engine.config import TrainConfig
    from slimkit.models import load_model
    from slimkit.search.train import check_space_data, load_supernet, train_supernet

    data = load_data("digits", input_size=(1, 16, 16), train_samples=64, val_samples=32, seed=0)
    space = check_space_data(load_space("tiny"), 1, data.num_classes)
    train_supernet(space, data, TrainConfig(epochs=1, batch_size=32, seed=0), tmp_path / "run", progress=False,
                   sorted_levels=2)
    net, _ = load_supernet(tmp_path / "run")
    assert isinstance(net, SortedNet) and len(net.levels) == 2
    child, _ = load_model(str(tmp_path / "run"), budget="level=0")
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(child(x), net.extract(net.levels[0]).eval()(x))
    with pytest.raises(BadInputError, match="sorted levels"):
        train_supernet(space, data, TrainConfig(epochs=1, batch_size=32, seed=0), tmp_path / "run", resume=True,
                       progress=False)


def test_pick_writes_the_chosen_level_as_a_model_dir(three, tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli

    from slimkit.models import load_model

    net, path = _saved(three, tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "search", "pick", path, "--budget", "macs=0.0001", "--out", tmp_path / "c")
    assert code == 2 and "no sub-model within" in err and not (tmp_path / "c").exists()
    code, _, err = run_cli(monkeypatch, capsys, "search", "pick", path, "--budget", "level=1", "--out", tmp_path / "c")
    assert code == 0, err
    child, info = load_model(str(tmp_path / "c"))
    arch = net.levels[1]
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    net.set_active(arch)
    with torch.no_grad():
        assert info.spec == "timm:slimkit_nas_child" and torch.equal(child(x), net(x))
