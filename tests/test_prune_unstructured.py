"""Unstructured masks: exact thresholds, LAMP scores by hand, the Zhu & Gupta schedule, folding."""

import pytest
import torch
import torch.nn as nn

from slimkit.compress.prune.unstructured import (GradualPruner, _lamp_scores, apply_masks, compressed_sizes,
                                                 magnitude_masks, polynomial_sparsity, sparsity_of)


def test_polynomial_schedule_values():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i = 0, s_f = 0.8, t0 = 0, n dt = 100
    assert polynomial_sparsity(0, 0.8, 0, 100) == 0.0
    assert polynomial_sparsity(50, 0.8, 0, 100) == pytest.approx(0.8 - 0.8 * 0.5**3)  # 0.7
    assert polynomial_sparsity(100, 0.8, 0, 100) == 0.8 and polynomial_sparsity(500, 0.8, 0, 100) == 0.8


def test_lamp_scores_by_hand():
    w = torch.tensor([1.0, -3.0, 2.0])  # squares 1, 9, 4; ascending 1, 4, 9; suffix sums 14, 13, 9
    torch.testing.assert_close(_lamp_scores(w), torch.tensor([1 / 14, 9 / 9, 4 / 13]))


def test_global_layer_and_lamp_masks():
    a = torch.tensor([0.1, 0.2, 0.3, 0.4])
    b = torch.tensor([10.0, 20.0, 30.0, 40.0])
    g = magnitude_masks({"a": a, "b": b}, 0.5, "global")
    assert g["a"].tolist() == [False] * 4 and g["b"].tolist() == [True] * 4
    layer = magnitude_masks({"a": a, "b": b}, 0.5, "layer")
    assert layer["a"].tolist() == [False, False, True, True] == layer["b"].tolist()
    # LAMP normalises per layer: both layers have identical score profiles, so each keeps half
    lamp = magnitude_masks({"a": a, "b": b}, 0.5, "lamp")
    assert lamp["a"].tolist() == [False, False, True, True] == lamp["b"].tolist()


def test_gradual_pruner_reaches_target_and_folds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    pruner = GradualPruner(model, 0.75, total_steps=40, frequency=5)
    for step in range(1, 41):
        pruner(step, 40)
        if step == 10:
            assert 0.0 < sparsity_of(model) < 0.75  # partway along the cubic ramp
    assert sparsity_of(model) == pytest.approx(0.75, abs=1 / (16 * 32 + 32 * 4))
    dense = sum(int((p != 0).sum()) for p in (model[0].weight, model[2].weight))
    assert dense == round(0.25 * (16 * 32 + 32 * 4))


def test_compressed_size_shrinks_with_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10))
    dense = compressed_sizes(model)
    weights = {"0.weight": model[0].weight, "1.weight": model[1].weight}
    apply_masks(weights, magnitude_masks(weights, 0.9, "global"))
    sparse = compressed_sizes(model)
    assert sparse["safetensors"] == dense["safetensors"]  # a dense file stays the same size
    assert sparse["gzip"] < 0.5 * dense["gzip"]
    nnz = int((model[0].weight != 0).sum()) + int((model[1].weight != 0).sum())
    assert sparse["sparse_bitmap"] == nnz * 4 + (256 * 256 + 7) // 8 + (2560 + 7) // 8 + (256 + 10) * 4
