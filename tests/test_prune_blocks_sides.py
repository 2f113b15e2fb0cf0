"""Exact rules for the blocks of the second sweep round: NF-Nets' scaled weight standardisation,
Visformer's (1, C, H, W) position embeddings, the outer sides of a protected (TinyViT-shaped)
attention, and the bound that stops channel indices multiplying (EfficientViM).

Each pruned model is compared with the same model built at the kept width from the kept weights
(or with the original with the removed channels zeroed where they stop mattering)."""

import pytest
import torch
import torch.nn as nn

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.axes import axis_after
from slimkit.compress.prune.safety import OpRecord


def _prune_half(model: nn.Module, x: torch.Tensor):
    return prune_(model, PruneConfig(target=None, ratio=0.5, round_to=1), x)


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    return [next(i for i in range(before.shape[0]) if torch.equal(before[i], row)) for row in after]


class StdNet(nn.Module):
    """Two timm ScaledStdConv2d (NF-ResNet's conv: the weight is standardised per output channel
    with F.batch_norm over a (1, out, in*k*k) reshape, times gain * gamma / sqrt(fan-in))."""

    def __init__(self, width: int = 16, out: int = 24) -> None:
        super().__init__()
        from timm.layers import ScaledStdConv2d

        self.conv1, self.conv2 = ScaledStdConv2d(3, width, 3), ScaledStdConv2d(width, out, 3)
        self.head = nn.Linear(out, 10)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_scaled_std_conv_is_pruned_as_the_conv_its_class_builds_at_the_kept_width():
    torch.manual_seed(0)
    model = StdNet()
    with torch.no_grad():
        model.conv1.gain.copy_(torch.linspace(0.5, 2.0, 16).view(16, 1, 1, 1))
        model.conv1.bias.copy_(torch.linspace(-1.0, 1.0, 16))
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    result = _prune_half(model, x[:1])
    assert result.protected == [] and model.conv1.out_channels == model.conv2.in_channels == 8  # before: kept whole
    kept = _kept_rows(original["conv1.bias"], model.conv1.bias.detach())
    assert model.conv1.gain.shape == (8, 1, 1, 1) and torch.equal(model.conv1.gain.detach(), original["conv1.gain"][kept])
    assert model.conv2.scale == pytest.approx((8 * 9) ** -0.5, rel=1e-12)  # gamma / sqrt(new fan-in)
    assert model.conv1.scale == pytest.approx(27**-0.5, rel=1e-12)  # its inputs (RGB) are not pruned
    assert model.conv2.out_channels == 12 and model.conv2.gain.shape == (12, 1, 1, 1)
    out = _kept_rows(original["conv2.bias"], model.conv2.bias.detach())
    reference = StdNet(width=8, out=12)
    reference.load_state_dict({**original, "conv1.weight": original["conv1.weight"][kept], "conv1.bias": original["conv1.bias"][kept],
                               "conv1.gain": original["conv1.gain"][kept], "conv2.weight": original["conv2.weight"][out][:, kept],
                               "conv2.bias": original["conv2.bias"][out], "conv2.gain": original["conv2.gain"][out],
                               "head.weight": original["head.weight"][:, out]})
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


class PosNet(nn.Module):
    """Visformer's stage entry: a conv, then a (1, C, H, W) position embedding added at the root."""

    def __init__(self, width: int = 16, side: int = 8) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, 24, 3, padding=1)
        self.pos_embed = nn.Parameter(torch.linspace(-1, 1, width * side * side).view(1, width, side, side))
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.conv1(x) + self.pos_embed)).mean((2, 3)))


def test_position_embedding_is_pruned_on_its_channel_axis():
    torch.manual_seed(0)
    model = PosNet()
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    assert _prune_half(model, x[:1]).protected == []  # before: its last axis (8 = W) was cut, the forward broke
    kept = _kept_rows(original["conv1.bias"], model.conv1.bias.detach())
    assert model.pos_embed.shape == (1, 8, 8, 8) and torch.equal(model.pos_embed.detach(), original["pos_embed"][:, kept])
    reference = PosNet()
    reference.load_state_dict(original)
    with torch.no_grad():
        removed = torch.ones(16, dtype=torch.bool)
        removed[kept] = False
        reference.conv2.weight[:, removed] = 0  # the removed channels, zeroed where they are read
        out = torch.ones(24, dtype=torch.bool)
        out[_kept_rows(original["conv2.bias"], model.conv2.bias.detach())] = False
        reference.head.weight[:, out] = 0
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)


class BiasedAttention(nn.Module):
    """TinyViT's attention: a norm inside, fused qkv viewed per head, a learned bias per head and
    token pair (`attention_biases`: protected, its inside not mappable), an output projection."""

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 8, tokens: int = 16) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm, self.qkv = nn.LayerNorm(dim), nn.Linear(dim, 3 * heads * head_dim)
        self.attention_biases = nn.Parameter(torch.linspace(-0.5, 0.5, heads * tokens * tokens).view(heads, tokens, tokens))
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.heads, -1).permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        attn = (q @ k.transpose(-2, -1) * self.head_dim**-0.5 + self.attention_biases).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class WindowNet(nn.Module):
    """TinyViT's block on a (B, H, W, C) map: padded to whole 4x4 windows, attention per window,
    the padding sliced off (`x[:, :H, :W]`, two slices in one indexing), a residual, a conv head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed, self.attn = nn.Conv2d(3, dim, 3, padding=1), BiasedAttention(dim)
        self.out = nn.Conv2d(dim, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # (B, 6, 6, C)
        b, h, w, c = x.shape
        p = nn.functional.pad(x, (0, 0, 0, 2, 0, 2))  # (B, 8, 8, C)
        win = p.view(b, 2, 4, 2, 4, c).transpose(2, 3).reshape(b * 4, 16, c)
        y = self.attn(win).view(b, 2, 2, 4, 4, c).transpose(2, 3).reshape(b, 8, 8, c)[:, :h, :w]
        x = (x + y).permute(0, 3, 1, 2)
        return self.head(self.out(x).mean((2, 3)))


def test_protected_attention_prunes_its_outer_sides_with_the_stream():
    torch.manual_seed(0)
    model = WindowNet()
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    result = _prune_half(model, x[:1])
    attn = model.attn
    width = model.embed.out_channels
    assert result.protected == [] and width == 9  # before: the whole stream was kept (16)
    assert attn.norm.normalized_shape == (width,) and attn.qkv.in_features == width == attn.proj.out_features
    assert attn.qkv.out_features == 48 and attn.proj.in_features == 16  # inside: every head kept
    kept = _kept_rows(original["embed.bias"], model.embed.bias.detach())
    out = _kept_rows(original["out.bias"], model.out.bias.detach())
    reference = WindowNet(dim=width)
    reference.out, reference.head = nn.Conv2d(width, len(out), 1), nn.Linear(len(out), 10)
    narrowed = {"embed.weight": original["embed.weight"][kept], "embed.bias": original["embed.bias"][kept],
                "attn.norm.weight": original["attn.norm.weight"][kept], "attn.norm.bias": original["attn.norm.bias"][kept],
                "attn.qkv.weight": original["attn.qkv.weight"][:, kept], "attn.proj.weight": original["attn.proj.weight"][kept],
                "attn.proj.bias": original["attn.proj.bias"][kept], "out.weight": original["out.weight"][out][:, kept],
                "out.bias": original["out.bias"][out], "head.weight": original["head.weight"][:, out]}
    reference.load_state_dict({**original, **narrowed})
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


class InputWidthAttention(BiasedAttention):
    """DaViT's / Twins' habit: the head size is read from the input's width (`C // num_heads`)."""

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) + self.attention_biases).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


def test_attention_that_reads_its_input_width_is_repaired_by_keeping_it_whole():
    torch.manual_seed(0)
    model = WindowNet()
    model.attn = InputWidthAttention(16)
    result = _prune_half(model, torch.randn(1, 3, 6, 6))
    assert result.protected == ["attn"]  # its forward broke with the stream pruned: protected whole, named
    assert model.attn.qkv.in_features == 16 and model.embed.out_channels == 16
    assert model.out.out_channels < 24  # the rest is still pruned


def test_padding_keeps_the_channel_axis_in_place():
    assert axis_after(OpRecord("pad", (1, 4, 4, 16), (1, 7, 7, 16), None), None, 3) == 3
    assert axis_after(OpRecord("pad", (1, 4, 4, 16), (1, 4, 4, 20), None), None, 3) is None  # padded channels


def test_indices_that_outgrow_the_model_stop_the_group():
    from torch_pruning.dependency.group import Group

    from slimkit.compress.prune.safety import _indexed_group_lookup, overflowed

    class Dep:
        handler, target = "prune", type("Node", (), {"name": "mixer.view", "module": None})()

    with _indexed_group_lookup(width=4):
        group = Group()
        group.add_dep(Dep(), [0, 1, 2])
        assert overflowed(group) is None and group.has_pruning_op(Dep(), [0, 1, 2])
        assert group.has_pruning_op(Dep(), list(range(5)))  # "already there": the expansion stops
        assert overflowed(group) == "mixer.view"


def test_group_lookup_answers_as_the_scan_with_repeated_items():
    from torch_pruning.dependency.group import Group

    from slimkit.compress.prune.safety import _indexed_group_lookup

    class Dep:
        handler, target = "prune", "node"

    with _indexed_group_lookup():
        group = Group()
        for idxs in ([0, 1], [0, 1], [2]):  # a target reached twice before its first visit is added twice
            group.add_dep(Dep(), idxs)
        assert group.__dict__["_slimkit_added"] == len(group._group) == 3  # the index answers, no list scan
        assert group.has_pruning_op(Dep(), [0, 1]) and group.has_pruning_op(Dep(), [2])
        assert not group.has_pruning_op(Dep(), [1])


def test_a_group_that_keeps_collecting_dependencies_stops():
    """Index lists that never repeat around a cycle of views (DeepSeek-ViT) grew one group until the OOM killer:
    past `max_deps` dependencies the expansion stops and the group is marked, to be kept whole."""
    from torch_pruning.dependency.group import Group

    from slimkit.compress.prune.safety import _indexed_group_lookup, overflowed

    class Dep:
        handler, target = "prune", type("Node", (), {"name": "encoder.blocks.3.attn", "module": None})()

    with _indexed_group_lookup(max_deps=3):
        group = Group()
        for i in range(3):
            group.add_dep(Dep(), [i])
        assert not group.has_pruning_op(Dep(), [7]) and overflowed(group) is None  # 3 deps: still expanding
        group.add_dep(Dep(), [7])
        assert group.has_pruning_op(Dep(), [8]) and overflowed(group) == "encoder.blocks.3.attn"


def test_negative_channel_indices_are_out_of_range():
    """A mapping gone wrong gave DeepSeek-ViT's attention output index -2048: torch would wrap it silently, so
    a negative index names the layer like one past its width."""
    from slimkit.compress.prune.safety import index_out_of_range

    lin = nn.Linear(4, 6)

    class Pruner:
        get_out_channels = staticmethod(lambda m: m.out_features)
        get_in_channels = staticmethod(lambda m: m.in_features)

    class Graph:
        _module2name = {lin: "proj"}
        get_pruner_of_module = staticmethod(lambda m: Pruner)
        is_out_channel_pruning_fn = staticmethod(lambda handler: handler == "out")

    dep = type("Dep", (), {"target": type("Node", (), {"module": lin})(), "handler": "out"})()
    assert index_out_of_range(Graph, [(dep, [0, 5])]) is None
    assert index_out_of_range(Graph, [(dep, [0, 6])]) == "proj"
    assert index_out_of_range(Graph, [(dep, [-2, 1])]) == "proj"
