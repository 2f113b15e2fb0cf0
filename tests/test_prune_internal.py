"""The pruner never lets an internal exception escape: a failure injected into Torch-Pruning's
dependency graph becomes one PruneInternalError naming the module and the operation; the CLI prints
it as one line with exit code 2 (the traceback only with --debug) and writes nothing."""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function

from cli_helpers import run_cli, tiny_model_file
from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.errors import PruneInternalError


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure\nsecond line")


def test_failure_while_building_the_graph_names_the_operation(monkeypatch):
    monkeypatch.setattr(tp.DependencyGraph, "_build_dependency", _boom)
    with pytest.raises(PruneInternalError) as info:
        prune_(_tiny(), PruneConfig(target="macs=0.5"), torch.randn(1, 3, 16, 16))
    err = info.value
    assert err.operation == "building the dependency graph"
    assert err.cause_type == "RuntimeError" and isinstance(err.__cause__, RuntimeError)
    assert "\n" not in str(err) and "injected failure" in str(err) and "second line" not in str(err)


def test_failure_while_pruning_a_layer_names_that_layer(monkeypatch):
    monkeypatch.setattr(function.BatchnormPruner, "prune_out_channels", _boom)
    monkeypatch.setattr(function.BatchnormPruner, "prune_in_channels", _boom)
    with pytest.raises(PruneInternalError) as info:
        prune_(_tiny(), PruneConfig(target="macs=0.5"), torch.randn(1, 3, 16, 16))
    assert info.value.operation == "pruning channel groups"
    assert info.value.module == "1"  # the BatchNorm of the Sequential, the layer being pruned
    assert str(info.value).startswith("pruning could not handle module '1' while pruning channel groups: RuntimeError")


def test_cli_prints_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tp.DependencyGraph, "_build_dependency", _boom)
    spec, out = tiny_model_file(tmp_path), tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "prune", spec, "--target", "macs=0.5", "--no-latency", "--out", out)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: pruning could not handle module 'Sequential' while building the dependency graph: "
        "RuntimeError: injected failure (an internal error; --debug shows it)"]
    assert "Traceback" not in err and not out.exists()


def test_cli_debug_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(tp.DependencyGraph, "_build_dependency", _boom)
    spec = tiny_model_file(tmp_path)
    from slimkit.cli.main import main

    monkeypatch.setattr("sys.argv", ["slimkit", "--debug", "prune", spec, "--no-latency", "--out", str(tmp_path / "o")])
    with pytest.raises(PruneInternalError) as info:
        main()
    assert isinstance(info.value.__cause__, RuntimeError)  # the original exception and its traceback are kept
