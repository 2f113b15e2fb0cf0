"""AFFNet: a lightweight network whose global token mixer is an adaptive frequency filter.

Paper: Z. Huang, Z. Zhang, C. Lan, Z.-J. Zha, Y. Lu, B. Guo, "Adaptive Frequency Filters As
Efficient Global Token Mixers", ICCV 2023.  Facts (the MobileViT-style layout: 3x3/2 stem, two
MobileNetV2 stages, three stages of [stride-2 MV2 + AFF blocks + 1x1 projection + 1x1 fusion],
1x1 expansion to min(4C, 960) before the classifier; the xx_small / x_small / small widths,
depths and FFN widths for AFFNet-ET / AFFNet-T / AFFNet; the AFF block = norm, MV2 "FFN"
(expansion ffn_dim / dim), norm, AFF token mixer, residual; the AFF token mixer = 2D real FFT,
a block-diagonal (8 blocks) two-layer complex MLP that turns the spectrum into a filter,
softshrink(0.01), filter x spectrum, inverse FFT, plus its input) come from the paper and the
authors' repository (microsoft/TokenMixers, "Adaptive Frequency Filters"); the code is our own.

Counting: the FFTs are not multiply-accumulates of a conv/linear/matmul, so slimkit's counter
leaves them out; the complex MLP is counted exactly as the 8 real block-diagonal products it is.
The paper's profiler instead adds ``5 * L * floor(ln L) * C`` per token mixer for the FFT pair and
``C * C / 2 * L`` for the complex MLP; the README zoo section reports both ways side by side.

ONNX: ``torch.fft`` does not export with the TorchScript exporter, so while exporting (and when
``export_friendly`` is set, see :func:`set_export_friendly`) the token mixer computes the same
transforms as matrix products with fixed DFT bases (exact up to float rounding).  The exported
graph therefore does O(L * (H + W)) DFT work per channel instead of an FFT's O(L log L); MAC
counts are taken in eager mode, where the FFT path runs.

Ours where the paper is silent: the released YAML configs are not in the repository, so the norm
inside AFF blocks is a per-position channel LayerNorm (the repository's argparse default) and the
activation is SiLU (the MobileViT family's default); input normalisation follows cvnets
(no mean/std: pixels in [0, 1]).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import generate_default_cfgs, register_model

from slimkit.zoo._common import ClassifierMixin, build_variant, linear_head, zoo_cfg

__all__ = ["PAPER_TABLE", "AFFNet", "AFFTokenMixer", "set_export_friendly"]


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MV2(nn.Module):
    """MobileNetV2 inverted residual (SiLU)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: float) -> None:
        super().__init__()
        hidden = make_divisible(int(round(cin * expand)))
        layers = [conv_bn(cin, hidden)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


def _dft_bases(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(n, device=device, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, k) / n
    return (torch.cos(angle) / math.sqrt(n)).to(dtype), (torch.sin(angle) / math.sqrt(n)).to(dtype)


class AFFTokenMixer(nn.Module):
    """Adaptive frequency filter: x + irfft2(filter(rfft2(x)) * rfft2(x)), orthonormal FFTs."""

    def __init__(self, dim: int, num_blocks: int = 8, sparsity: float = 0.01) -> None:
        super().__init__()
        if dim % num_blocks:
            raise ValueError(f"{dim} channels do not split into {num_blocks} blocks")
        self.dim, self.num_blocks, self.block = dim, num_blocks, dim // num_blocks
        self.sparsity, self.export_friendly = sparsity, False
        bs = self.block
        self.w1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, bs, bs))
        self.b1 = nn.Parameter(0.02 * torch.randn(2, num_blocks, bs))
        self.w2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, bs, bs))
        self.b2 = nn.Parameter(0.02 * torch.randn(2, num_blocks, bs))

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, c, h, f = x.shape
        x = x.view(b, self.num_blocks, self.block, h, f)
        return torch.einsum("bkihw,kio->bkohw", x, w).reshape(b, c, h, f)

    def _bias(self, b: torch.Tensor) -> torch.Tensor:
        return b.reshape(1, -1, 1, 1)

    def complex_mlp(self, re: torch.Tensor, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two block-diagonal complex linear layers (SiLU between), then softshrink."""
        w1, w2 = self.w1, self.w2
        r = F.silu(self._mix(re, w1[0]) - self._mix(im, w1[1]) + self._bias(self.b1[0]))
        i = F.silu(self._mix(im, w1[0]) + self._mix(re, w1[1]) + self._bias(self.b1[1]))
        r2 = self._mix(r, w2[0]) - self._mix(i, w2[1]) + self._bias(self.b2[0])
        i2 = self._mix(i, w2[0]) + self._mix(r, w2[1]) + self._bias(self.b2[1])
        return F.softshrink(r2, self.sparsity), F.softshrink(i2, self.sparsity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # FFTs in full precision
        spec_re, spec_im = self._rfft2(xf)
        filt_re, filt_im = self.complex_mlp(spec_re, spec_im)
        out_re = filt_re * spec_re - filt_im * spec_im
        out_im = filt_re * spec_im + filt_im * spec_re
        return x + self._irfft2(out_re, out_im, h, w).to(x.dtype)

    def _use_dft(self) -> bool:
        return self.export_friendly or torch.onnx.is_in_onnx_export()

    def _rfft2(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._use_dft():
            spec = torch.fft.rfft2(x, norm="ortho")
            return spec.real, spec.imag
        h, w = x.shape[-2:]
        ch, sh = _dft_bases(h, x.device, x.dtype)
        cw, sw = _dft_bases(w, x.device, x.dtype)
        cw, sw = cw[:, : w // 2 + 1], sw[:, : w // 2 + 1]
        a_re, a_im = x @ cw, -(x @ sw)  # along W
        return ch @ a_re + sh @ a_im, ch @ a_im - sh @ a_re  # along H: multiply by exp(-i...)

    def _irfft2(self, re: torch.Tensor, im: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if not self._use_dft():
            return torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")
        ch, sh = _dft_bases(h, re.device, re.dtype)
        cw, sw = _dft_bases(w, re.device, re.dtype)
        b_re, b_im = ch @ re - sh @ im, ch @ im + sh @ re  # inverse along H: exp(+i...)
        # inverse real FFT along W: double the bins that stand for a conjugate pair
        f = w // 2 + 1
        weight = torch.full((f,), 2.0, device=re.device, dtype=re.dtype)
        weight[0] = 1.0
        if w % 2 == 0:
            weight[-1] = 1.0
        cw, sw = cw[:f] * weight[:, None], sw[:f] * weight[:, None]
        return b_re @ cw - b_im @ sw


def set_export_friendly(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every AFF token mixer of `model` (in place) to the DFT-as-matmul form; returns model."""
    for m in model.modules():
        if isinstance(m, AFFTokenMixer):
            m.export_friendly = enabled
    return model


class AFFLayer(nn.Module):
    """norm - MV2 FFN - norm - AFF token mixer, with an outer residual."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1, self.ffn = LayerNorm2d(dim), MV2(dim, dim, 1, ffn_dim / dim)
        self.norm2, self.mixer = LayerNorm2d(dim), AFFTokenMixer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm2(self.ffn(self.norm1(x))))


class AFFBlock(nn.Module):
    """AFF layers + norm, 1x1 projection, 1x1 fusion with the block input."""

    def __init__(self, dim: int, ffn_dim: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[AFFLayer(dim, ffn_dim) for _ in range(depth)], LayerNorm2d(dim))
        self.proj = conv_bn(dim, dim, act=False)
        self.fusion = conv_bn(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat([x, self.proj(self.layers(x))], dim=1))


class AFFNet(ClassifierMixin, nn.Module):
    """AFFNet (timm interface)."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256, 320),
        mv2_expand: float = 4.0,
        aff_depths: tuple[int, int, int] = (2, 4, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.stem = conv_bn(in_chans, 16, 3, 2)
        stages = [
            nn.Sequential(MV2(16, widths[0], 1, mv2_expand)),
            nn.Sequential(*[MV2(widths[0] if i == 0 else widths[1], widths[1], 2 if i == 0 else 1, mv2_expand)
                            for i in range(3)]),
        ]  # fmt: skip
        for i, depth in enumerate(aff_depths):
            cin, dim = widths[i + 1], widths[i + 2]
            stages.append(nn.Sequential(MV2(cin, dim, 2, mv2_expand), AFFBlock(dim, 2 * dim, depth)))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = min(4 * widths[-1], 960)
        self.conv_head = conv_bn(widths[-1], self.num_features)
        self.head = linear_head(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        if pre_logits:
            return x
        return self.head(F.dropout(x, self.drop_rate, self.training))


def _cfg() -> dict:
    return zoo_cfg("stem.0", url="", input_size=(3, 256, 256), pool_size=(8, 8), mean=(0.0, 0.0, 0.0),
                   std=(1.0, 1.0, 1.0))


_VARIANTS = {  # repository modes xx_small / x_small / small
    "affnet_et": dict(widths=(32, 48, 64, 104, 144), mv2_expand=2.0),
    "affnet_t": dict(widths=(32, 48, 96, 160, 192), mv2_expand=4.0),
    "affnet": dict(widths=(32, 64, 128, 256, 320), mv2_expand=4.0),
}
#: The paper's ImageNet table (Huang et al., ICCV 2023; same in the repository README), 256x256.
#: FLOPs there: cvnets' profiler = conv/linear MACs + C*C/2*L (complex MLP) + 5*L*floor(ln L)*C
#: (FFT pair) per token mixer; norms count 0.
PAPER_TABLE = {
    "affnet_et": {"params": "1.4M", "macs": "0.4G"},
    "affnet_t": {"params": "2.6M", "macs": "0.8G"},
    "affnet": {"params": "5.5M", "macs": "1.5G"},
}
default_cfgs = generate_default_cfgs({name: _cfg() for name in _VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs) -> AFFNet:
    return build_variant(AFFNet, variant, pretrained, _VARIANTS[variant], kwargs)


@register_model
def affnet_et(pretrained: bool = False, **kwargs) -> AFFNet:
    """AFFNet-ET (1.4M params, 0.4G FLOPs at 256x256 in the paper)."""
    return _create("affnet_et", pretrained, **kwargs)


@register_model
def affnet_t(pretrained: bool = False, **kwargs) -> AFFNet:
    """AFFNet-T (2.6M params, 0.8G FLOPs at 256x256 in the paper)."""
    return _create("affnet_t", pretrained, **kwargs)


@register_model
def affnet(pretrained: bool = False, **kwargs) -> AFFNet:
    """AFFNet (5.5M params, 1.5G FLOPs at 256x256 in the paper)."""
    return _create("affnet", pretrained, **kwargs)
