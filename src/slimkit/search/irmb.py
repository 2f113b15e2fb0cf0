"""EMOv2's iRMB block as a searchable child block (the zoo's `slimkit.zoo.emov2.I2RMB`, made elastic-friendly).

    x -> BN -> v: 1x1 conv + SiLU (the mixer; with attention on, softmax(q k^T) v over the map's tokens)
      -> depthwise kxk + BN + SiLU (+ the mixer's output: the inner skip) -> 1x1 projection + BN -> (+ x)

Where it differs from the zoo block, and why:
- Attention on/off is a per-block choice, and the 1x1 conv mixer *is* V: switching attention on adds
  only Q and K, so both choices share the expand weights in the supernet (EMOv2 builds either one).
- One window over the whole map: at the sizes a CPU search affords (4x4 to 8x8 maps where attention is
  allowed) EMOv2's 7x7 close/remote windows cover the map anyway.
- BatchNorm everywhere (EMOv2 uses LayerNorm in its last stages): children recalibrate BN statistics, and
  BN folds into the convolutions at export. A BN after the projection stands in for the layer scale.
- Heads: the largest count <= C / head_dim that divides C, so a narrower child still splits evenly.
Attention is plain matmul + softmax (not fused SDPA) so the supernet, the child and the ONNX export run
the same ops.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["IRMBBlock", "attend", "num_heads"]


def num_heads(channels: int, head_dim: int) -> int:
    """The largest head count <= channels // head_dim that divides `channels` (at least 1)."""
    return next(h for h in range(max(1, channels // head_dim), 0, -1) if channels % h == 0)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention over all H*W positions: q, k (B, C, H, W), v (B, C_v, H, W) -> (B, C_v, H, W)."""
    b, c, h, w = q.shape
    n = h * w
    q = q.reshape(b, heads, c // heads, n).transpose(-2, -1)
    k = k.reshape(b, heads, c // heads, n)
    v = v.reshape(b, heads, v.shape[1] // heads, n).transpose(-2, -1)
    weights = ((q * (c // heads) ** -0.5) @ k).softmax(dim=-1)
    return (weights @ v).transpose(-2, -1).reshape(b, -1, h, w)


class IRMBBlock(nn.Module):
    """One iRMB of a searched child (see the module docstring)."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, residual: bool,
                 attention: bool = False, head_dim: int = 16):
        super().__init__()
        self.residual, self.heads = bool(residual), num_heads(cin, head_dim)
        self.norm = nn.BatchNorm2d(cin)
        self.v = nn.Conv2d(cin, hidden, 1, bias=True)
        self.q = nn.Conv2d(cin, cin, 1, bias=True) if attention else None
        self.k = nn.Conv2d(cin, cin, 1, bias=True) if attention else None
        self.dw = nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.proj = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        h = self.act(self.v(n))
        if self.q is not None:
            h = attend(self.q(n), self.k(n), h, self.heads)
        local = self.act(self.bn2(self.dw(h)))
        y = self.bn3(self.proj(local + h if self.residual else local))
        return y + x if self.residual else y
