"""Exact rules for blocks the sweep over timm families turned up, each on a tiny module of that shape.

Each pruned model is compared with the original in which the removed channels are zeroed at the
place where they stop mattering (the next layer's input columns), so 'pruned' means 'same function
minus those channels', not merely 'runs'."""

import copy

import pytest
import torch
import torch.nn as nn
from torch_pruning.dependency import index_mapping

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.errors import PruneInternalError  # noqa: F401  (the error these rules avoid)
from slimkit.errors import BadInputError


class StarReLU(nn.Module):
    """MetaFormer's activation: scalar learnable scale and bias around relu(x)^2."""

    def __init__(self) -> None:
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([0.1]))

    def forward(self, x):
        return self.scale * torch.relu(x) ** 2 + self.bias


class Scale(nn.Module):
    """timm MetaFormer Scale: a per-channel parameter viewed through a stored shape."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x):
        return x * self.scale.view(self.shape)


class Affine(nn.Module):
    """ResMLP's learnable affine after a block: alpha * x + beta per channel, channels last."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha, self.beta = nn.Parameter(torch.linspace(0.5, 1.5, dim)), nn.Parameter(torch.linspace(-0.1, 0.1, dim))

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


class TokenMixer(nn.Module):
    """ResMLP / MLP-Mixer token mixing: a Linear over the token axis between two transposes."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.linear_tokens = nn.Linear(tokens, tokens)

    def forward(self, x):
        return self.linear_tokens(x.transpose(1, 2)).transpose(1, 2)


class FoldHalves(nn.Module):
    """Sums the two halves of the channels: no channel survives as itself."""

    def forward(self, x):
        return x.reshape(x.shape[0], 2, x.shape[1] // 2, *x.shape[2:]).sum(1)


class ChannelsLastMlp(nn.Module):
    """CSATv2 stage tail: a ConvNeXt-style block (channels last -> Linear MLP -> (B, N, C) ->
    transpose -> reshape to (B, C, H, W)), then a transformer block's head (flatten, transpose to
    (B, N, C), LayerNorm, Linear): the last Linear reads the channels again on the last axis."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.norm, self.fc3 = nn.LayerNorm(dim), nn.Linear(dim, 24)

    def forward(self, x):
        b, _, h, w = x.shape
        t = self.fc2(torch.relu(self.fc1(x.permute(0, 2, 3, 1)))).reshape(b, h * w, -1)
        x = t.transpose(1, 2).reshape(b, -1, h, w)
        return self.fc3(self.norm(x.flatten(2).transpose(1, 2))).mean(1)


def _conv_net(middle: nn.Module, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), middle, nn.Conv2d(width, 24, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Indices of `before`'s rows that survived in `after` (pruning keeps rows in order)."""
    return [next(i for i in range(before.shape[0]) if torch.equal(before[i], row)) for row in after]


def _prune_ratio(model: nn.Module, x: torch.Tensor, ratio: float = 0.5):
    return prune_(model, PruneConfig(target=None, ratio=ratio, round_to=1), x)


def _same_minus_removed(original: nn.Sequential, pruned: nn.Sequential, x, pairs=((0, 2), (2, 6)), atol=1e-5):
    """pruned(x) == original(x) with the removed outputs of each layer `first` zeroed at the input
    columns of layer `second` (for every (first, second) in `pairs`); returns the first pair's kept rows."""
    found = []
    with torch.no_grad():
        for first, second in pairs:
            kept = _kept_rows(original[first].bias.detach(), pruned[first].bias.detach())  # biases are distinct
            mask = torch.zeros(original[first].weight.shape[0], dtype=torch.bool)
            mask[kept] = True
            original[second].weight[:, ~mask] = 0
            found.append(kept)
        torch.testing.assert_close(pruned(x), original(x), rtol=0, atol=atol)
    return found[0]


def test_group_norm_without_bias_is_pruned_with_its_weight():
    model = _conv_net(nn.Sequential(nn.GroupNorm(1, 16, affine=True, bias=False), nn.ReLU()))
    with torch.no_grad():
        model[1][0].weight.copy_(torch.linspace(0.5, 2.0, 16))
    original = [p.detach().clone() for p in (model[0].weight, model[1][0].weight)]
    _prune_ratio(model, torch.randn(1, 3, 8, 8))
    kept = _kept_rows(original[0], model[0].weight.detach())
    norm = model[1][0]
    assert norm.num_channels == len(kept) == model[0].out_channels == 8 and norm.bias is None
    assert torch.equal(norm.weight.detach(), original[1][kept])


def test_scalar_scale_and_bias_activation_does_not_block_its_channels():
    model = _conv_net(StarReLU())
    original = _conv_net(StarReLU())
    x = torch.randn(2, 3, 8, 8)
    result = _prune_ratio(model, x[:1])
    assert model[0].out_channels == 8 and model[2].in_channels == 8  # before the rule: 16, kept whole
    assert not any("cannot follow" in n for n in result.notes)
    _same_minus_removed(original, model, x)


def test_scale_with_stored_view_shape_is_rewritten():
    model, original = _conv_net(Scale(16)), _conv_net(Scale(16))
    x = torch.randn(2, 3, 8, 8)
    result = _prune_ratio(model, x[:1])
    assert result.protected == []  # its forward did not break, so nothing was protected
    assert model[1].shape == (8, 1, 1) and model[1].scale.shape == (8,)
    kept = _same_minus_removed(original, model, x)
    assert torch.equal(model[1].scale.detach(), original[1].scale.detach()[kept])


def test_affine_after_activation_pruned_and_token_mixing_kept_apart():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 16), TokenMixer(4), nn.Linear(16, 32), nn.GELU(), Affine(32),
                             nn.Linear(32, 16), nn.Linear(16, 10))

    model, original = net(), net()
    x = torch.randn(2, 4, 12)
    beta = original[4].beta.detach().clone()
    result = _prune_ratio(model, x[:1])
    assert model[1].linear_tokens.in_features == 4 == model[1].linear_tokens.out_features  # tokens untouched
    assert model[0].out_features == 16  # the stream through the token transposes is kept whole, and said so
    assert any("cannot follow" in n for n in result.notes)
    assert model[2].out_features == 16 and model[4].alpha.shape == (16,) and model[5].in_features == 16
    kept = _same_minus_removed(original, model, x, pairs=((2, 5), (5, 6)))
    assert torch.equal(model[4].beta.detach(), beta[kept])


def test_unmappable_concat_keeps_its_groups_whole(monkeypatch):
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.head = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], 1))

    def cannot(graph, node):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")  # what CoaT's concat raised

    monkeypatch.setattr(index_mapping, "update_concat_index_mapping", cannot)
    model = Cat()
    result = _prune_ratio(model, torch.randn(1, 3, 8, 8))
    assert model.a.out_channels == 8 and model.b.out_channels == 8 and model.head[0].in_channels == 16
    assert model.head[0].out_channels == 8  # the group behind the concat is still pruned
    assert any("cannot follow" in n for n in result.notes)


def test_refusal_names_the_module_that_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), FoldHalves(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(BadInputError) as info:
        _prune_ratio(model, torch.randn(1, 3, 6, 6))  # 6 != 8 channels: no axis looks like the channels
    message = str(info.value)
    assert message.startswith("nothing in this model can be pruned safely (no prunable channel groups): "
                              "100% of the MACs are in layers kept whole, the largest: 0 (its channels reach `reshape` "
                              "[1, 8, 6, 6] -> [1, 2, 4, 6, 6] in 1 (FoldHalves)"), message


def test_fixed_depthwise_blur_filter_follows_its_input_width(tmp_path):
    """timm BlurPool2d (TResNet's anti-aliased downsampling): conv2d with a fixed (C, 1, 3, 3)
    binomial buffer and groups=C. Channel-preserving, so the channels before it are pruned; its
    `channels` and buffer shrink with them, and a model directory rebuilds the (unsaved) buffer."""
    from timm.layers import BlurPool2d

    from slimkit.models import load_model_dir, save_model_dir
    from slimkit.models.resolve import ModelInfo

    model, original = _conv_net(BlurPool2d(16)), _conv_net(BlurPool2d(16))
    x = torch.randn(2, 3, 8, 8)
    result = _prune_ratio(model, x[:1])
    assert result.protected == [] and model[0].out_channels == 8 and model[2].in_channels == 8
    blur = model[1]
    assert blur.channels == 8 and blur.filt.shape == (8, 1, 3, 3)
    binomial = torch.tensor([1.0, 2.0, 1.0])
    assert torch.equal(blur.filt[3, 0], torch.outer(binomial, binomial) / 16)
    _same_minus_removed(original, model, x)
    save_model_dir(model, ModelInfo("module", "Blur"), tmp_path / "m")
    reloaded, _ = load_model_dir(tmp_path / "m", base=_conv_net(BlurPool2d(16)))
    assert reloaded[1].filt.shape == (8, 1, 3, 3)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model.eval()(x))


def test_depthwise_buffer_with_distinct_rows_is_named_not_resized():
    """A fixed per-channel filter whose rows differ cannot follow an unknown channel selection: the
    module whose forward breaks is protected and named (here the refusal, as nothing else can absorb it)."""
    from timm.layers import BlurPool2d

    blur = BlurPool2d(16)
    blur.filt[0].mul_(2.0)
    model = _conv_net(blur)
    with pytest.raises(BadInputError, match=r"^pruning breaks the forward of 1 \(RuntimeError: .*groups=16"):
        _prune_ratio(model, torch.randn(1, 3, 8, 8))


def _narrow_reference(wide: nn.Sequential, pruned: nn.Sequential, middle: nn.Module) -> tuple[nn.Sequential, list[int]]:
    """`wide` rebuilt with `middle` at the kept width of layer 0 and the kept weights, and the
    outputs layer 2 lost zeroed at the classifier's input (exact: ReLU and pooling are per channel)."""
    kept = _kept_rows(wide[0].bias.detach(), pruned[0].bias.detach())
    kept2 = _kept_rows(wide[2].bias.detach(), pruned[2].bias.detach())
    narrow = _conv_net(middle, width=len(kept))
    with torch.no_grad():
        narrow[0].weight.copy_(wide[0].weight[kept])
        narrow[0].bias.copy_(wide[0].bias[kept])
        narrow[2].weight.copy_(wide[2].weight[:, kept])
        narrow[2].bias.copy_(wide[2].bias)
        narrow[6].weight.copy_(wide[6].weight)
        narrow[6].weight[:, [i for i in range(24) if i not in kept2]] = 0
        narrow[6].bias.copy_(wide[6].bias)
    return narrow, kept


def test_statistic_over_channels_is_taken_over_the_kept_channels():
    """RMSNorm2d (MobileNetV5's RmsNormAct2d: x * rsqrt(mean(x^2 over channels)) * weight) and a
    mean-over-channels gate: no channel flows through the reduction, so the channels before it are
    pruned, and the pruned model equals the same model built at the kept width with the kept weights."""
    from timm.layers import RmsNorm2d

    class MeanGate(nn.Module):
        def forward(self, x):
            return x * x.mean(1, keepdim=True).sigmoid()

    x = torch.randn(2, 3, 8, 8)
    for middle, narrow_middle in ((RmsNorm2d(16), RmsNorm2d(8)), (MeanGate(), MeanGate())):
        if isinstance(middle, RmsNorm2d):
            with torch.no_grad():
                middle.weight.copy_(torch.linspace(0.5, 1.5, 16))
        model, wide = _conv_net(middle), _conv_net(copy.deepcopy(middle))
        result = _prune_ratio(model, x[:1])
        assert result.notes == [] and model[0].out_channels == 8 and model[2].in_channels == 8
        narrow, kept = _narrow_reference(wide, model, narrow_middle)
        if isinstance(middle, RmsNorm2d):
            assert model[1].normalized_shape == (8,)
            assert torch.equal(model[1].weight.detach(), wide[1].weight.detach()[kept])
            with torch.no_grad():
                narrow[1].weight.copy_(wide[1].weight[kept])
        with torch.no_grad():
            torch.testing.assert_close(model(x), narrow(x), rtol=0, atol=1e-6)


def test_channels_back_to_axis_one_after_a_linear_are_followed_to_the_next_linear():
    """The transpose (B, N, C) -> (B, C, N) after a Linear was judged unsafe (a Linear wrote the
    last axis, which moves away; CSATv2's stage-4 blocks were kept whole for it). Followed through
    the reshape, flatten, transpose and LayerNorm to the Linear that reads the last axis, it is
    safe: the block's channels are pruned, the same channels all the way."""
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ChannelsLastMlp(16), nn.Linear(24, 10))

    model, original = net(), net()
    x = torch.randn(2, 3, 3, 3)  # 9 tokens, 16 channels: no axis looks like the channels by accident
    result = _prune_ratio(model, x[:1])
    assert not any("cannot follow" in n for n in result.notes), result.notes
    block, ref = model[1], original[1]
    assert block.fc1.in_features == model[0].out_channels < 16
    assert block.fc2.out_features == block.norm.normalized_shape[0] == block.fc3.in_features < 16
    kept = _kept_rows(ref.fc2.bias.detach(), block.fc2.bias.detach())
    assert torch.equal(block.norm.weight.detach(), ref.norm.weight.detach()[kept])
    rows = _kept_rows(ref.fc3.bias.detach(), block.fc3.bias.detach())  # fc3's own outputs are pruned too
    assert torch.equal(block.fc3.weight.detach(), ref.fc3.weight.detach()[rows][:, kept])  # the same channels throughout


class Pointwise(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.conv(x)


class StoredBias(nn.Module):
    """A block whose forward adds a buffer of its stored width (breaks once its channels are pruned)
    and holds a module of its own: not a torch.nn-only class, so one failure does not name them all."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = Pointwise(dim)
        self.register_buffer("table", torch.linspace(0, 1, dim))

    def forward(self, x):
        return self.proj(x) + self.table.view(1, -1, 1, 1)


def test_a_class_that_breaks_twice_is_protected_everywhere():
    """Seven blocks of one class break alike: after the second failure every block of that class is
    protected, instead of one per repair until the repairs run out (MViTv2's attention)."""
    torch.manual_seed(0)
    blocks = [m for _ in range(7) for m in (StoredBias(16), nn.Conv2d(16, 16, 1))]  # each block breaks on its own
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *blocks, nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    result = _prune_ratio(model, torch.randn(1, 3, 8, 8))
    names = [str(i) for i in range(1, 15, 2)]
    assert sorted(result.protected) == sorted(names) and len(result.protected) == 7
    assert model[14].out_channels == 7 and model[15].out_channels == model[19].in_features == 13  # the rest is still pruned
    assert all(model[int(n)].proj.conv.in_channels == 16 for n in names)


def test_concat_and_split_bookkeeping_with_an_unknown_width_is_skipped():
    """EVA (DINOv3 rotary attention): a concat/split whose piece widths Torch-Pruning could not infer
    holds a None among its sizes, and its pruner added None to an int during the cut. With an unknown
    width the bookkeeping is skipped; with known widths it is Torch-Pruning's (8 = 4 + 4, channels 1
    and 5 removed: 3 + 3)."""
    from types import SimpleNamespace

    from slimkit.compress.prune.pruners import ConcatPruner, SplitPruner

    for pruner, attr in ((ConcatPruner(), "concat_sizes"), (SplitPruner(), "split_sizes")):
        unknown = SimpleNamespace(**{attr: [4, None]})
        assert pruner.prune_out_channels(unknown, [1, 5]) is None and getattr(unknown, attr) == [4, None]
        known = SimpleNamespace(**{attr: [4, 4]})
        pruner.prune_out_channels(known, [1, 5])
        assert getattr(known, attr) == [3, 3]
