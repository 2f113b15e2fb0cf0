"""Exact, hand-checkable structured-pruning cases: which channels survive, and that the pruned
model computes exactly what the original computes once the removed channels are zeroed."""

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.adapters import analyse_model, classifier_layers
from slimkit.compress.prune.criteria import build_importance
from slimkit.compress.prune.safety import tolerant_index_mapping
from slimkit.compress.prune.structured import allocate, apply_plan, plan_groups


def _cfg(ratio=0.5, criterion="l1", allocation="uniform", round_to=1):
    return PruneConfig(target=None, ratio=ratio, criterion=criterion, allocation=allocation, round_to=round_to)


def _plan(model, x, criterion="l1"):
    model.eval()
    heads = classifier_layers(model, model(x).shape[-1])
    return plan_groups(model, x, build_importance(criterion, model), heads, [], analyse_model(model))


def _zero_removed(model, x, plan, keeps):
    """Copy of `model` whose to-be-removed channels output exact zeros (weights, biases, BN affine)."""
    zeroed = copy.deepcopy(model)
    with tolerant_index_mapping():  # the same split/reshape handling the pruner uses
        dg = tp.DependencyGraph().build_dependency(zeroed, example_inputs=x, verbose=False)
        with torch.no_grad():
            _zero_groups(zeroed, dg, plan, keeps)
    return zeroed


def _zero_groups(zeroed, dg, plan, keeps):
    for g, keep in zip(plan.groups, keeps):
        order = torch.argsort(g.imp, stable=True)[: g.size - keep].tolist()
        idxs = sorted(i + k * g.size for k in range(g.ch_groups) for i in order)
        if not idxs:
            continue
        root = zeroed.get_submodule(g.root)
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels if g.out else pruner.prune_in_channels, idxs)
        for dep, dep_idxs in group:
            layer = dep.target.module
            if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(layer, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                layer.weight[dep_idxs] = 0
                if layer.bias is not None:
                    layer.bias[dep_idxs] = 0


def _assert_function_preserved(model, x, ratio=0.5, allocation="uniform", round_to=1):
    """Prune at `ratio`; the pruned model must equal the original with removed channels zeroed."""
    plan = _plan(model, x)
    keeps = allocate(plan, ratio, allocation, round_to, 0.9)
    assert any(k < g.size for g, k in zip(plan.groups, keeps)), "nothing was pruned"
    zeroed = _zero_removed(model, x, plan, keeps)
    pruned = apply_plan(copy.deepcopy(model), x, plan, keeps)
    with torch.no_grad():
        expected, got = zeroed(x), pruned(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    return plan, keeps, pruned


class Chain(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> pool -> fc (3 classes)."""

    def __init__(self, cin=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_chain_keeps_largest_l1_filters_exactly():
    torch.manual_seed(0)
    model = Chain().eval()
    # conv1 filter i has every weight equal to v[i]; everything downstream is uniform, so the
    # L1 group score orders conv1's channels by v: keep the 4 largest -> channels 0, 2, 4, 6.
    v = torch.tensor([5.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0])
    with torch.no_grad():
        model.conv1.weight.copy_(v.view(8, 1, 1, 1).expand_as(model.conv1.weight))
        model.conv2.weight.fill_(0.1)
        w2 = torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0, 7.0])  # conv2 filter norms: keep 1, 3, 5
        model.conv2.weight.mul_(w2.view(6, 1, 1, 1))
        model.fc.weight.fill_(0.5)
    original = copy.deepcopy(model)
    result = prune_(model, _cfg(0.5), torch.randn(1, 3, 8, 8))
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.in_channels) == (4, 4, 4)
    assert (model.conv2.out_channels, model.bn2.num_features, model.fc.in_features) == (3, 3, 3)
    assert model.fc.out_features == 3  # the classifier keeps its size
    torch.testing.assert_close(model.conv1.weight, original.conv1.weight[[0, 2, 4, 6]])
    torch.testing.assert_close(model.conv2.weight, original.conv2.weight[[1, 3, 5]][:, [0, 2, 4, 6]])
    torch.testing.assert_close(model.fc.weight, original.fc.weight[:, [1, 3, 5]])
    assert result.kept["conv1"] == {"before": 8, "after": 4, "kept": 0.5}
    # MACs at 8x8: conv1 3*8*9*64 + conv2 8*6*9*64 + fc 6*3 -> 3*4*9*64 + 4*3*9*64 + 3*3
    assert result.before["macs"] == 3 * 8 * 9 * 64 + 8 * 6 * 9 * 64 + 6 * 3
    assert result.after["macs"] == 3 * 4 * 9 * 64 + 4 * 3 * 9 * 64 + 3 * 3


def test_chain_function_preserved():
    torch.manual_seed(1)
    _assert_function_preserved(Chain().eval(), torch.randn(2, 3, 8, 8))


def test_one_channel_conv_is_not_depthwise():
    """A conv with in_channels == groups == 1 (gray input) is an ordinary conv, and an 8->1 conv
    keeps its single output channel: no layer is ever removed."""
    class Gray(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.squeeze = nn.Conv2d(8, 1, 1)  # one channel, groups=1
            self.expand = nn.Conv2d(1, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = torch.relu(self.bn(self.stem(x)))
            h = torch.relu(self.expand(torch.relu(self.squeeze(h))))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(2)
    model = Gray().eval()
    _, _, pruned = _assert_function_preserved(model, torch.randn(2, 1, 8, 8))
    assert pruned.stem.in_channels == 1 and pruned.stem.groups == 1 and pruned.stem.out_channels == 4
    assert pruned.squeeze.out_channels == 1 and pruned.expand.in_channels == 1
    assert pruned.expand.out_channels == 4 and pruned.fc.out_features == 4


def test_residual_add_prunes_both_branches_alike():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.body, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.bn0(self.stem(x)))
            h = torch.relu(h + self.bn1(self.body(h)))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(3)
    plan, keeps, pruned = _assert_function_preserved(Res().eval(), torch.randn(2, 3, 8, 8))
    assert len(plan.groups) == 1  # stem out, body in+out, both BNs and fc in are one group
    assert pruned.stem.out_channels == pruned.body.in_channels == pruned.body.out_channels == 4
    assert pruned.bn0.num_features == pruned.bn1.num_features == pruned.fc.in_features == 4


def test_depthwise_conv_follows_its_input():
    class DW(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw1, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
            self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
            self.pw2, self.bn3 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.bn1(self.pw1(x)))
            h = torch.relu(self.bn2(self.dw(h)))
            return self.fc(torch.relu(self.bn3(self.pw2(h))).mean((2, 3)))

    torch.manual_seed(4)
    _, _, pruned = _assert_function_preserved(DW().eval(), torch.randn(2, 3, 8, 8))
    assert pruned.dw.in_channels == pruned.dw.out_channels == pruned.dw.groups == 4
    assert pruned.pw2.in_channels == 4 and pruned.pw2.out_channels == 3


def test_grouped_conv_prunes_every_group_alike():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn0 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
            self.g, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.bn0(self.stem(x)))
            return self.fc(torch.relu(self.bn1(self.g(h))).mean((2, 3)))

    torch.manual_seed(5)
    _, _, pruned = _assert_function_preserved(Grouped().eval(), torch.randn(2, 3, 8, 8))
    assert pruned.g.groups == 2
    assert pruned.g.in_channels == 4 and pruned.g.out_channels == 4  # 2 per group on each side
    assert pruned.g.weight.shape == (4, 2, 3, 3)


class ConcatSplit(nn.Module):
    """Two branches concatenated; the concat is then split with `chunk` into equal halves."""

    def __init__(self):
        super().__init__()
        self.a, self.bna = nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.b, self.bnb = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.mix, self.bnm = nn.Conv2d(10, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.left, self.right = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.cat([torch.relu(self.bna(self.a(x))), torch.relu(self.bnb(self.b(x)))], 1)
        h = torch.relu(self.bnm(self.mix(h)))
        left, right = h.chunk(2, dim=1)
        return self.fc(torch.cat([self.left(left), self.right(right)], 1).mean((2, 3)))


def test_concat_is_pruned_and_equal_split_is_kept_whole():
    torch.manual_seed(6)
    _, _, pruned = _assert_function_preserved(ConcatSplit().eval(), torch.randn(2, 3, 8, 8))
    assert pruned.a.out_channels == 3 and pruned.b.out_channels == 2
    assert pruned.mix.in_channels == 5  # concat of the two pruned branches, in order
    # chunk(2) needs equal halves: Torch-Pruning would prune each half on its own, so the
    # channels that flow through it are kept whole.
    assert pruned.mix.out_channels == 8 and pruned.left.in_channels == pruned.right.in_channels == 4


def test_channel_shuffle_keeps_shuffled_channels_and_prunes_the_branch():
    from torchvision.models.shufflenetv2 import InvertedResidual

    class TinyShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.unit = InvertedResidual(8, 8, 1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.unit(self.stem(x)).mean((2, 3)))

    torch.manual_seed(7)
    _, _, pruned = _assert_function_preserved(TinyShuffle().eval(), torch.randn(2, 3, 8, 8))
    branch = pruned.unit.branch2
    assert branch[0].out_channels == 2 and branch[3].groups == 2  # the branch's inner width is pruned
    assert branch[5].out_channels == 4 and pruned.stem[0].out_channels == 8  # shuffled channels kept


def test_mixed_kernel_conv_split_sizes_follow_pruning():
    from timm.layers import MixedConv2d

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw, self.bn = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
            self.mixed = MixedConv2d(8, 8, kernel_size=[3, 5], depthwise=True)
            self.bn2 = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.bn(self.pw(x)))
            return self.fc(torch.relu(self.bn2(self.mixed(h))).mean((2, 3)))

    torch.manual_seed(8)
    _, _, pruned = _assert_function_preserved(Mixed().eval(), torch.randn(2, 3, 8, 8))
    convs = list(pruned.mixed.values())
    assert pruned.mixed.splits == [c.in_channels for c in convs] and sum(pruned.mixed.splits) == 4
    assert all(c.groups == c.in_channels == c.out_channels for c in convs)


def test_attention_heads_fixed_automatically():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, num_classes=4, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune_(model, _cfg(0.5, criterion="l2", allocation="uniform", round_to=8), x)
    attn = model.blocks[0].attn
    assert attn.num_heads == 3 and attn.head_dim == 32 and attn.attn_dim == 96
    assert attn.qkv.out_features == 3 * 96 and attn.proj.in_features == 96
    assert attn.scale == 32 ** -0.5
    assert model(x).shape == (2, 4) and result.after["macs"] < result.before["macs"]


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "random", "taylor", "lrp"])
def test_every_criterion_prunes_the_chain(criterion):
    from slimkit.compress.prune.criteria import Calibration

    torch.manual_seed(9)
    model = Chain().eval()
    calib = Calibration([(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))])
    prune_(model, _cfg(0.5, criterion=criterion), torch.randn(1, 3, 8, 8), calib)
    assert model.conv1.out_channels == 4 and model(torch.randn(1, 3, 8, 8)).shape == (1, 3)
