"""A child of a search space as an ordinary network, registered into timm as `slimkit_nas_child`.

The architecture travels as a plain JSON spec (channel counts, kernels, strides per block), so a model
directory of a searched child is rebuilt by name + kwargs like any timm model: every slimkit command
(profile, compress, export) loads it without the supernet or the search code's state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import register_model

from slimkit.search.irmb import IRMBBlock
from slimkit.search.space import Arch, SearchSpace

__all__ = ["ChildNet", "MBBlock", "child_spec", "slimkit_nas_child"]


def child_spec(space: SearchSpace, arch: Arch) -> dict[str, Any]:
    """The concrete layer sizes of `arch`: blocks as [in, hidden, out, kernel, stride, residual] (iRMB spaces:
    + attention, and the spec names the block kind and the head width)."""
    cin = space.stem_out(arch.width)
    spec: dict[str, Any] = {"in_chans": space.in_chans, "num_classes": space.num_classes, "stem": cin,
                            "stem_stride": space.stem_stride, "head": space.head_channels,
                            "resolution": arch.resolution, "blocks": []}
    if space.block == "irmb":  # MBConv specs stay as before: saved child directories keep loading
        spec.update(block="irmb", head_dim=space.head_dim)
    for si, stage in enumerate(space.stages):
        cout = space.channels(si, arch.width)
        for bi in range(arch.depths[si]):
            stride = stage.stride if bi == 0 else 1
            residual = bi > 0 or (stride == 1 and cin == cout)
            row = [cin, cin * arch.expands[si][bi], cout, arch.kernels[si][bi], stride, residual]
            spec["blocks"].append(row + [arch.attention[si][bi]] if arch.attention is not None else row)
            cin = cout
    return spec


ACTIVATIONS = {"mbconv": nn.ReLU6, "irmb": nn.SiLU}  # of the stem and head (and inside the blocks)


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True,
             kind: str = "mbconv") -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [ACTIVATIONS[kind]()] if act else layers


class MBBlock(nn.Module):
    """Inverted residual: expand 1x1, depthwise kxk, linear project 1x1 (+ identity when shapes allow)."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, residual: bool):
        super().__init__()
        self.residual = bool(residual)
        self.expand, self.bn1 = _conv_bn(cin, hidden, 1, 1)[:2]
        self.dw, self.bn2 = _conv_bn(hidden, hidden, k, stride, groups=hidden)[:2]
        self.project, self.bn3 = _conv_bn(hidden, cout, 1, 1)[:2]
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.expand(x)))
        h = self.act(self.bn2(self.dw(h)))
        y = self.bn3(self.project(h))
        return y + x if self.residual else y


class ChildNet(nn.Module):
    """A searched network: stem, MBConv or iRMB blocks, 1x1 head, average pool, linear classifier."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.num_classes = int(spec["num_classes"])
        self.input_size = (int(spec["in_chans"]), int(spec["resolution"]), int(spec["resolution"]))
        kind = spec.get("block", "mbconv")
        self.stem = nn.Sequential(*_conv_bn(spec["in_chans"], spec["stem"], 3, spec["stem_stride"], kind=kind))
        if kind == "irmb":
            blocks = [IRMBBlock(*b, head_dim=spec["head_dim"]) for b in spec["blocks"]]
        else:
            blocks = [MBBlock(*b) for b in spec["blocks"]]
        self.blocks = nn.Sequential(*blocks)
        last = spec["blocks"][-1][2] if spec["blocks"] else spec["stem"]
        self.head = nn.Sequential(*_conv_bn(last, spec["head"], 1, 1, kind=kind))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(spec["head"], self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register_model
def slimkit_nas_child(pretrained: bool = False, arch: dict[str, Any] | None = None, **kwargs: Any) -> ChildNet:
    """A child found by `slimkit search run` (`arch`: its spec, as a model directory records it)."""
    if arch is None:
        raise ValueError("slimkit_nas_child needs arch=<spec> (it is built from a search result)")
    spec = dict(arch)
    for key in ("num_classes", "in_chans"):
        if kwargs.get(key) is not None and kwargs[key] != spec[key]:
            raise ValueError(f"slimkit_nas_child: {key}={kwargs[key]} differs from the searched {spec[key]}")
    model = ChildNet(spec)
    model.pretrained_cfg = {"input_size": model.input_size, "mean": (0.5,) * spec["in_chans"],
                            "std": (0.5,) * spec["in_chans"], "num_classes": model.num_classes}
    return model
