"""Each registered pruning criterion's channel scores against values computed by hand on a tiny net.

The net: x (N, 2, 1, 2) -> conv1 (1x1, 2->3, no bias) -> bn1 (eval, mean 0, var 1, eps 0: a = g*z + b)
-> ReLU -> mean over positions -> fc (3->2, no bias). The only prunable group is conv1's 3 output
channels: conv1's rows, bn1's gamma and fc's columns. Every criterion normalises a group's scores by
their mean, so the expected vector is `v / v.mean()` for the per-channel sums `v` below.
Taylor and LRP gradients are written out by hand (softmax - one-hot, back through fc, ReLU, bn1).
"""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from slimkit.compress.prune import PruneConfig, available_criteria, prune_
from slimkit.compress.prune.criteria import Calibration, build_importance

W1 = torch.tensor([[1.0, 1.0], [2.0, -1.0], [-1.0, 3.0]])  # conv1 rows: L1 2, 3, 4; L2^2 2, 5, 10
GAMMA = torch.tensor([2.0, 1.0, 0.5])
BETA = torch.tensor([0.0, 0.5, -1.0])  # no criterion counts BN's bias: a wrong one that did fails below
W2 = torch.tensor([[1.0, 2.0, -1.0], [0.0, 1.0, 1.0]])  # fc columns: L1 1, 3, 2; L2^2 1, 5, 2
X = torch.tensor([[[[1.0, 0.5]], [[2.0, -1.0]]],
                  [[[2.0, 0.0]], [[-1.0, 1.0]]],
                  [[[-1.0, 2.0]], [[1.0, 1.0]]]])  # (3, 2, 1, 2)
Y = torch.tensor([0, 1, 1])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(3, eps=0.0)
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(W1.view(3, 2, 1, 1))
            self.bn1.weight.copy_(GAMMA)
            self.bn1.bias.copy_(BETA)
            self.fc.weight.copy_(W2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn1(self.conv1(x))).mean((2, 3)))


def _scores(name: str, model: nn.Module) -> torch.Tensor:
    """The criterion's scores for conv1's output-channel group (what the planner ranks)."""
    model.eval()
    importance = build_importance(name, model, Calibration([(X, Y)]), seed=0)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=X[:1])
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1, 2])
    return importance(group)


def _normalised(v) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.mean()


def _forward_by_hand():
    """Activations and the hand-derived backward pass of the mean cross-entropy (no autograd)."""
    n, positions = X.shape[0], X.shape[3]
    z = torch.einsum("ck,nkp->ncp", W1, X[:, :, 0, :])  # conv1 out (n, 3, positions)
    a = GAMMA.view(1, 3, 1) * z + BETA.view(1, 3, 1)  # bn1 out
    on = (a > 0).float()
    h = (a * on).mean(2)  # (n, 3)
    logits = h @ W2.T
    dlogits = (torch.softmax(logits, 1) - nn.functional.one_hot(Y, 2).float()) / n
    dh = dlogits @ W2  # (n, 3)
    da = dh.unsqueeze(2) / positions * on  # through the mean and the ReLU
    grads = {"fc": dlogits.T @ h, "gamma": (da * z).sum((0, 2)),
             "conv1": torch.einsum("ncp,nkp->ck", da * GAMMA.view(1, 3, 1), X[:, :, 0, :])}
    # d logit[true class] / d activation, per sample (LRP starts from the true class's logit)
    dtrue = W2[Y].unsqueeze(2) / positions * on  # wrt bn1 out
    return z, a, grads, dtrue


def test_every_registered_criterion_is_checked_here():
    from slimkit.compress.prune.criteria import CRITERIA

    ours = {n for n in available_criteria() if CRITERIA.get(n).__module__.startswith("slimkit.")}  # not tests' own
    assert ours == {"l1", "l2", "bn_scale", "taylor", "lrp", "random"}


def test_l1_by_hand():
    # |conv1 row| + |gamma| + |fc column|: 2+2+1, 3+1+3, 4+0.5+2
    torch.testing.assert_close(_scores("l1", Tiny()), _normalised([5.0, 7.0, 6.5]))


def test_l2_by_hand():
    # squared: 2+4+1, 5+1+5, 10+0.25+2
    torch.testing.assert_close(_scores("l2", Tiny()), _normalised([7.0, 11.0, 12.25]))


def test_bn_scale_by_hand():
    torch.testing.assert_close(_scores("bn_scale", Tiny()), _normalised(GAMMA.abs()))


def test_bn_scale_falls_back_to_l1_without_batchnorm():
    mlp = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)).eval()
    with torch.no_grad():
        mlp[0].weight.copy_(W1)
        mlp[2].weight.copy_(W2)
    dg = tp.DependencyGraph().build_dependency(mlp, example_inputs=torch.randn(1, 2))
    group = dg.get_pruning_group(mlp[0], tp.prune_linear_out_channels, idxs=[0, 1, 2])
    expected = _normalised([2.0 + 1.0, 3.0 + 3.0, 4.0 + 2.0])  # rows of W1 + columns of W2
    torch.testing.assert_close(build_importance("bn_scale", mlp)(group), expected)


def test_taylor_by_hand():
    model = Tiny()
    _, _, g, _ = _forward_by_hand()
    # sum over the group's weights of |w * dL/dw|: conv1's row, bn1's gamma, fc's column
    v = (W1 * g["conv1"]).abs().sum(1) + (GAMMA * g["gamma"]).abs() + (W2 * g["fc"]).abs().sum(0)
    scores = _scores("taylor", model)
    torch.testing.assert_close(scores, _normalised(v), rtol=1e-5, atol=1e-6)
    # the gradients were really those of the calibration batch (the criterion ran backward itself)
    torch.testing.assert_close(model.bn1.weight.grad, g["gamma"], rtol=1e-5, atol=1e-7)


def test_lrp_by_hand():
    z, a, _, dtrue = _forward_by_hand()
    # LRP-0 = activation x gradient of the true-class logit, summed over positions, |.| per sample, summed
    conv = (z * dtrue * GAMMA.view(1, 3, 1)).sum(2).abs().sum(0)  # at conv1's output
    bn = (a * dtrue).sum(2).abs().sum(0)  # at bn1's output
    torch.testing.assert_close(_scores("lrp", Tiny()), _normalised((conv + bn) / 2), rtol=1e-5, atol=1e-6)


def test_random_is_seeded_and_differs_from_every_criterion():
    r0, r0_again = _scores("random", Tiny()), _scores("random", Tiny())
    torch.testing.assert_close(r0, r0_again)
    for name in ("l1", "l2", "bn_scale", "taylor", "lrp"):
        assert not torch.allclose(_normalised(r0), _scores(name, Tiny()), atol=1e-3)


@pytest.mark.parametrize("criterion, kept", [
    ("l1", [1, 2]), ("l2", [1, 2]), ("bn_scale", [0, 1]),
])
def test_prune_keeps_the_channels_the_scores_rank_highest(criterion, kept):
    model = Tiny()
    prune_(model, PruneConfig(target=None, ratio=1 / 3, criterion=criterion, allocation="uniform", round_to=1), X[:1])
    assert model.conv1.out_channels == 2
    torch.testing.assert_close(model.conv1.weight.view(2, 2), W1[kept])
    torch.testing.assert_close(model.bn1.weight, GAMMA[kept])
