"""Split computing with a supervised-compression bottleneck (Entropic Student, Matsubara et al.).

The model is cut at a layer; an encoder maps the cut tensor to C channels, which are rounded to
integers on the device and entropy-coded under a learned factorized prior; the server decodes the
integers, maps them back with a decoder and runs the rest of the model. Training replaces the
rounding by additive uniform noise (Balle et al.) so the rate -log2 p(y) has a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from slimkit.errors import BadInputError

__all__ = ["quantize", "SplitConfig", "FactorizedPrior", "SplitNet", "DevicePart", "ServerPart", "build_split"]

SUPPORT_RADIUS = 127  # integer symbols the prior's tables cover, each side of 0
TAIL_MASS = 1e-6  # prior mass left outside a channel's support (symbols there are clamped)
# A split is fine-tuned for few steps, and Adam moves a raw parameter by about lr per step: the prior's
# parameters are stored divided by this gain so its density can follow the encoder within a short run.
PRIOR_GAIN = 20.0


@dataclass
class SplitConfig:
    at: str
    channels: int = 8
    hidden: int | None = None  # encoder/decoder width (default: the cut tensor's channels)
    mixtures: int = 3


class FactorizedPrior(nn.Module):
    """Per-channel density of the bottleneck: a mixture of logistics, one CDF per channel.

    The probability of integer bin q is CDF(q + 1/2) - CDF(q - 1/2): a proper pmf over the integers,
    so the same formula gives the training rate and the coder's tables.
    """

    def __init__(self, channels: int, mixtures: int = 3) -> None:
        super().__init__()
        spread = torch.linspace(-2.0, 2.0, mixtures).repeat(channels, 1)
        self.loc = nn.Parameter(spread / PRIOR_GAIN)
        self.log_scale = nn.Parameter(torch.zeros(channels, mixtures))
        self.logits = nn.Parameter(torch.zeros(channels, mixtures))

    def cdf(self, y: torch.Tensor) -> torch.Tensor:
        """CDF of each element of y (N, C, H, W) under its channel's mixture."""
        shape = (1, -1, 1, 1, self.loc.shape[1])
        loc, inv_scale = self.loc * PRIOR_GAIN, torch.exp(-self.log_scale * PRIOR_GAIN)
        z = (y.unsqueeze(-1) - loc.view(shape)) * inv_scale.view(shape)
        return (torch.sigmoid(z) * torch.softmax(self.logits * PRIOR_GAIN, dim=1).view(shape)).sum(-1)

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        return (self.cdf(y + 0.5) - self.cdf(y - 0.5)).clamp_min(1e-9)

    @torch.no_grad()
    def tables(self) -> tuple[list[int], list[list[float]]]:
        """(lowest symbol, pmf over [lo, hi]) per channel: the coder's model, renormalised on the support."""
        q = torch.arange(-SUPPORT_RADIUS, SUPPORT_RADIUS + 1, dtype=torch.float64)
        channels = self.loc.shape[0]
        pmf = self.double().likelihood(q.view(1, 1, 1, -1).expand(1, channels, 1, -1))[0, :, 0]
        self.float()
        cdf = pmf.cumsum(1)
        lows, tables = [], []
        for c in range(channels):
            keep = ((cdf[c] > TAIL_MASS) & (cdf[c] - pmf[c] < 1 - TAIL_MASS)).nonzero().flatten()
            lo, hi = int(keep.min()), int(keep.max())
            p = pmf[c, lo: hi + 1]
            lows.append(lo - SUPPORT_RADIUS)
            tables.append((p / p.sum()).tolist())
        return lows, tables


def quantize(y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The integers the device sends: rounded, clamped to each channel's coded support [lo, hi]."""
    view = (1, -1, 1, 1)
    return torch.minimum(torch.maximum(torch.round(y), lo.view(view)), hi.view(view))


def _coder(cin: int, hidden: int, cout: int, first_k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, first_k, padding=first_k // 2), nn.ReLU(),
                         nn.Conv2d(hidden, cout, 4 - first_k, padding=(4 - first_k) // 2))


class SplitNet(nn.Module):
    """head -> encoder -> (noise | round + clamp) -> decoder -> tail; keeps the last batch's bits per image."""

    def __init__(self, head: nn.Module, tail: nn.Module, cut_channels: int, cfg: SplitConfig) -> None:
        super().__init__()
        hidden = cfg.hidden or cut_channels
        self.head, self.tail = head, tail
        self.encoder = _coder(cut_channels, hidden, cfg.channels, 3)  # 3x3 then 1x1
        self.decoder = _coder(cfg.channels, hidden, cut_channels, 1)  # 1x1 then 3x3
        self.prior = FactorizedPrior(cfg.channels, cfg.mixtures)
        self.register_buffer("lo", torch.full((cfg.channels,), -float(SUPPORT_RADIUS)))
        self.register_buffer("hi", torch.full((cfg.channels,), float(SUPPORT_RADIUS)))
        self.last_bits: torch.Tensor | None = None

    def quantize(self, y: torch.Tensor) -> torch.Tensor:
        return quantize(y, self.lo, self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.encoder(self.head(x))
        y = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else self.quantize(y)
        self.last_bits = -torch.log2(self.prior.likelihood(y)).flatten(1).sum(1)
        return self.tail(self.decoder(y))

    def set_support_(self, lows: list[int], tables: list[list[float]]) -> None:
        """Fix the clamp range to the coder's tables (in place)."""
        self.lo.copy_(torch.tensor(lows, dtype=torch.float32))
        self.hi.copy_(torch.tensor([lo + len(t) - 1 for lo, t in zip(lows, tables)], dtype=torch.float32))


class DevicePart(nn.Module):
    """The device's model: image -> integer symbols (as float32, N x C x h x w)."""

    def __init__(self, net: SplitNet) -> None:
        super().__init__()
        self.head, self.encoder = net.head, net.encoder
        self.register_buffer("lo", net.lo.clone())
        self.register_buffer("hi", net.hi.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(self.encoder(self.head(x)), self.lo, self.hi)


class ServerPart(nn.Module):
    """The server's model: decoded symbols -> logits."""

    def __init__(self, net: SplitNet) -> None:
        super().__init__()
        self.decoder, self.tail = net.decoder, net.tail

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.tail(self.decoder(y))


def build_split(model: nn.Module, input_size: tuple[int, int, int], cfg: SplitConfig) -> tuple[SplitNet, dict]:
    """A new SplitNet around `model` (its layers are shared, not copied) cut after `cfg.at`; plus the cut's shapes."""
    from slimkit.deploy.edge.graph import head_module, tail_module, trace_model

    if cfg.channels < 1:
        raise BadInputError(f"--bottleneck must be >= 1 channel, got {cfg.channels}")
    traced = trace_model(model.eval(), tuple(input_size))
    cut = traced.find_cut(cfg.at, flag="--at")
    shape = traced.shapes[cut.node]
    net = SplitNet(head_module(traced, cut), tail_module(traced, cut), shape[1], cfg)
    return net, {"at": cut.label, "cut_shape": list(shape[1:]),
                 "code_shape": [cfg.channels, shape[2], shape[3]]}
