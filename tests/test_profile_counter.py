"""Exact, hand-computed MAC counts for every op family the counter handles."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.profile import count_macs, register_mac_handler
from slimkit.profile.handlers import MAC_HANDLERS


def macs(model, *inputs):
    return count_macs(model, inputs if len(inputs) > 1 else inputs[0]).total


@pytest.mark.parametrize(
    "conv, shape, expected",
    [
        # Cout*Hout*Wout * Cin/groups * kh*kw
        (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10), 8 * 10 * 10 * 3 * 9),
        (nn.Conv2d(3, 8, 3, stride=2), (1, 3, 11, 11), 8 * 5 * 5 * 3 * 9),
        (nn.Conv2d(8, 16, 3, groups=4, padding=1), (2, 8, 6, 6), 2 * 16 * 6 * 6 * 2 * 9),
        (nn.Conv2d(8, 8, 5, groups=8, padding=2), (1, 8, 7, 7), 8 * 7 * 7 * 1 * 25),  # depthwise
        (nn.Conv2d(4, 4, 3, dilation=2), (1, 4, 9, 9), 4 * 5 * 5 * 4 * 9),  # dilated: 9 - 2*2 = 5
        (nn.Conv2d(1, 6, 3), (1, 1, 5, 5), 6 * 3 * 3 * 1 * 9),  # one input channel, not depthwise
        (nn.Conv1d(4, 6, 3), (1, 4, 10), 6 * 8 * 4 * 3),
        (nn.Conv3d(2, 3, 2), (1, 2, 3, 3, 3), 3 * 8 * 2 * 8),
    ],
)
def test_conv_macs(conv, shape, expected):
    assert macs(conv, torch.randn(shape)) == expected


@pytest.mark.parametrize(
    "conv, shape, expected",
    [
        # transposed: every input element scatters into Cout/groups * kh*kw outputs
        (nn.ConvTranspose2d(4, 6, 3, stride=2), (1, 4, 5, 5), 4 * 5 * 5 * 6 * 9),
        (nn.ConvTranspose2d(4, 8, 2, stride=2, groups=2), (2, 4, 3, 3), 2 * 4 * 3 * 3 * 4 * 4),
    ],
)
def test_transposed_conv_macs(conv, shape, expected):
    assert macs(conv, torch.randn(shape)) == expected


def test_linear_2d_and_3d():
    lin = nn.Linear(16, 10)
    assert macs(lin, torch.randn(4, 16)) == 4 * 16 * 10
    assert macs(lin, torch.randn(2, 7, 16)) == 2 * 7 * 16 * 10
    assert macs(nn.Linear(16, 10, bias=False), torch.randn(3, 5, 16)) == 3 * 5 * 16 * 10


class Functional(nn.Module):
    """Only functional ops and a parameter used twice: matmul, bmm, einsum, F.linear."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))

    def forward(self, a, b):
        x = torch.matmul(a, b)  # (2, 3, 4) @ (2, 4, 5) -> 2*3*4*5
        y = torch.einsum("bij,jk->bik", x, self.w.t())  # (2, 3, 5) x (5, 6) -> 2*3*5*6
        z = torch.bmm(y, y.transpose(1, 2))  # (2, 3, 6) @ (2, 6, 3) -> 2*3*6*3
        return F.linear(z.relu(), torch.ones(2, 3)) + torch.mm(z[0], torch.ones(3, 2))  # 2*3*3*2 + 3*3*2


def test_functional_matmul_family():
    expected = 2 * 3 * 4 * 5 + 2 * 3 * 5 * 6 + 2 * 3 * 6 * 3 + 2 * 3 * 3 * 2 + 3 * 3 * 2
    assert macs(Functional(), torch.randn(2, 3, 4), torch.randn(2, 4, 5)) == expected


def test_module_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x))

    count = count_macs(Twice(), torch.randn(1, 8))
    assert count.total == 2 * 64
    assert count.module_calls["fc"] == 2
    assert count.self_by_module["fc"] == 128


def _attn_macs(b, h, lq, lk, e, ev):
    return b * h * lq * lk * e + b * h * lq * lk * ev


@pytest.mark.parametrize("b, h, lq, lk, e, ev", [(1, 2, 5, 5, 8, 8), (2, 3, 7, 11, 4, 6), (1, 1, 1, 9, 16, 16)])
def test_sdpa_fused_equals_unfused(b, h, lq, lk, e, ev):
    q, k, v = torch.randn(b, h, lq, e), torch.randn(b, h, lk, e), torch.randn(b, h, lk, ev)

    class Fused(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    class Unfused(nn.Module):
        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(-2, -1) / e**0.5, -1) @ v

    expected = _attn_macs(b, h, lq, lk, e, ev)
    assert macs(Fused(), q, k, v) == expected
    assert macs(Unfused(), q, k, v) == expected


def test_sdpa_with_mask_and_causal():
    q = torch.randn(1, 2, 6, 8)

    class Causal(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q, is_causal=True)

    # The convention counts the full score matrix, masked or not.
    assert macs(Causal(), q) == _attn_macs(1, 2, 6, 6, 8, 8)


def _mha_expected(b, lq, lk, e):
    return b * e * e * (lq + 2 * lk) + 2 * b * lq * lk * e + b * lq * e * e


@pytest.mark.parametrize("b, lq, lk, e, heads", [(2, 5, 5, 16, 4), (1, 3, 7, 12, 3)])
def test_multihead_attention_fast_path_and_slow_path(b, lq, lk, e, heads):
    mha = nn.MultiheadAttention(e, heads, batch_first=True).eval()
    q, kv = torch.randn(b, lq, e), torch.randn(b, lk, e)
    expected = _mha_expected(b, lq, lk, e)
    fast = count_macs(mha, (q, kv, kv))  # eval + no_grad: the fused fast path
    assert fast.total == expected
    mha.train()  # training mode takes the decomposed path through linear and bmm
    slow = count_macs(mha, (q, kv, kv))
    assert slow.total == expected


def test_self_attention_fast_path_is_fused_op():
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    count = count_macs(mha, (x, x, x))
    assert "_native_multi_head_attention" in count.by_op
    assert count.total == _mha_expected(2, 5, 5, 16)


def test_transformer_encoder_layer_fast_path():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    fused = count_macs(layer, x)
    layer.train()
    layer.dropout = layer.dropout1 = layer.dropout2 = nn.Identity()
    unfused = count_macs(layer, x)
    expected = _mha_expected(2, 5, 5, 16) + 2 * 2 * 5 * 16 * 32
    assert unfused.total == expected
    assert fused.total == expected


def test_elementwise_reported_separately():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    count = count_macs(model, torch.randn(1, 2, 3, 3))
    assert count.total == 4 * 9 * 2
    assert count.elementwise["native_batch_norm"] == 36
    assert count.elementwise_total == 72  # BN output + ReLU output, 36 elements each


def test_per_module_attribution():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 5)))
    count = count_macs(model, torch.randn(1, 3, 6, 6))
    assert count.self_by_module["0"] == 4 * 16 * 27
    assert count.self_by_module["1.1"] == 64 * 5
    assert count.by_module["1"] == 64 * 5
    assert count.by_module[""] == count.total == 4 * 16 * 27 + 320
    assert count.by_category == {"conv": 4 * 16 * 27, "linear": 320}
    assert count.output_shapes["0"] == [1, 4, 4, 4]


def test_activation_lifetime_estimate_chain():
    # input 1x1x4x4 (64 B), conv out 1x2x4x4 (128 B), relu in place, conv out 1x1x4x4 (64 B)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                          nn.Conv2d(2, 1, 3, padding=1, bias=False))
    count = count_macs(model, torch.randn(1, 1, 4, 4))
    # Peak: while the last conv runs, its input (128 B) and output (64 B) are live; the model
    # input dies after the first conv reads it.
    assert count.peak_activation_bytes == 128 + 64


def test_custom_handler_registration():
    class Custom(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 0)

    x = torch.randn(10)
    assert macs(Custom(), x) == 0
    op = torch.ops.aten.cumsum
    try:
        register_mac_handler(op, category="other")(lambda args, kwargs, out: out.numel())
        assert macs(Custom(), x) == 10
    finally:
        MAC_HANDLERS.pop(op, None)
