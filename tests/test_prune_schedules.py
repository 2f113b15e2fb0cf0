"""Pruning at initialization (PreCropping), LAPP progressive pruning, iterative prune/fine-tune + KD."""

import pytest
import torch
import torch.nn as nn

from slimkit.compress.prune import PruneConfig
from slimkit.compress.prune.measure import count_macs
from slimkit.data import load_data


def _cnn():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_synflow_densities_and_group_fractions():
    from slimkit.compress.prune.precrop import group_fractions, synflow_densities
    from slimkit.compress.prune.structured import GroupPlan, Plan

    torch.manual_seed(0)
    d = synflow_densities(_cnn(), torch.randn(1, 3, 16, 16), 0.3)
    total = 3 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 32 * 10
    kept = d["0"] * 3 * 16 * 9 + d["3"] * 16 * 32 * 9 + d["7"] * 32 * 32 * 9 + d["12"] * 32 * 10
    assert kept / total == pytest.approx(0.3, abs=0.002)
    # one group feeding layer B (density 0.25) and leaving layer A (density 0.5): k_A = 0.5, k_B = 0.5
    plan = Plan([GroupPlan("A", True, 1, 4, torch.ones(4), [("A", "out", 4), ("B", "in", 4)])])
    assert group_fractions(plan, {"A": 0.5}, 0.1) == pytest.approx([0.5])


def test_precrop_meets_macs_target_at_init():
    from slimkit.compress.prune.precrop import precrop_

    torch.manual_seed(0)
    model, x = _cnn().eval(), torch.randn(1, 3, 16, 16)
    before = count_macs(model, x)
    result = precrop_(model, PruneConfig(target="macs=0.4", round_to=1), x)
    assert abs(count_macs(model, x) / before - 0.4) <= 0.04 and result.achieved == pytest.approx(count_macs(model, x) / before)
    assert model(x).shape == (1, 10)


def test_lapp_prunes_progressively_toward_target():
    from slimkit.compress.prune.lapp import lapp_train_

    torch.manual_seed(0)
    data = load_data("digits", input_size=(3, 16, 16), train_samples=512)
    model, x = _cnn(), torch.randn(1, 3, 16, 16)
    before = count_macs(model, x)
    info = lapp_train_(model, data.train, 0.5, 2.0, x, lr=0.05)
    # the measured MACs meet the 0.5 target within 3% (the search's 2% plus one channel's step)
    assert count_macs(model, x) / before == pytest.approx(info["macs_ratio"])
    assert abs(info["macs_ratio"] / 0.5 - 1) <= 0.03, info
    assert info["threshold_ratio"] < 0.8  # the learned thresholds alone already cut channels for real
    widths = [model[0].out_channels, model[3].out_channels, model[7].out_channels]
    assert sorted(widths) == sorted(info["keeps"]) and len({w / c for w, c in zip(widths, (16, 32, 32))}) == 3  # layer-adaptive
    assert model(x).shape == (1, 10)


def test_iterative_prune_with_kd_steps_down():
    from slimkit.compress.prune.iterative import iterative_prune_

    torch.manual_seed(0)
    data = load_data("digits", input_size=(3, 16, 16), train_samples=256, val_samples=128)
    model, x = _cnn(), torch.randn(1, 3, 16, 16)
    history = iterative_prune_(model, PruneConfig(target="macs=0.3", round_to=1), x, data.train, steps=3,
                               epochs_per_step=0.25, kd=True, val=data.val)
    ratios = [h["ratio"] for h in history]
    assert ratios[0] > ratios[1] > ratios[2] and abs(ratios[-1] - 0.3) <= 0.03
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in history)
