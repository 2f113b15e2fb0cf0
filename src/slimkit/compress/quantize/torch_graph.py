"""Find conv -> batchnorm and conv -> activation -> conv chains in a PyTorch model with torch.fx.

The traced graph is used only to read the structure; the original modules (by qualified name) are
the ones that get changed, so the model keeps its class and can still be saved as a model directory.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["trace", "Chain", "ChannelClip", "conv_bn_pairs", "conv_chains", "activation_kind"]

log = logging.getLogger(__name__)

_CONVS = (nn.Conv2d, nn.Linear)
# Per-channel ops that commute with a positive per-channel scale: f(x / s) = f(x) / s.
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class ChannelClip(nn.Module):
    """min(relu(x), upper[c]): ReLU6 with a per-channel ceiling, so equalization stays exact."""

    def __init__(self, upper: torch.Tensor):
        super().__init__()
        self.register_buffer("upper", upper.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self.upper)


class _Tracer(fx.Tracer):
    """Keeps batch norms (incl. timm's BatchNormAct2d) and timm's no-trace modules as leaves."""

    def __init__(self, notrace: tuple[type, ...] = ()):
        super().__init__()
        self.notrace = notrace

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, *self.notrace)):
            return True
        return super().is_leaf_module(m, qualname)


def _timm_notrace(model: nn.Module) -> tuple[type, ...]:
    if not any(type(m).__module__.startswith("timm.") for m in model.modules()):
        return ()  # importing timm costs seconds; only timm models need its list
    try:
        from timm.layers._fx import get_notrace_modules

        return tuple(get_notrace_modules())
    except ImportError:
        return ()


def trace_or_reason(model: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """(the fx graph of `model` (not changed), None), or (None, why it cannot be traced)."""
    try:
        return _Tracer(_timm_notrace(model)).trace(model), None
    except Exception as exc:  # data-dependent control flow etc.: callers skip the technique and say so
        reason = f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning("%s; skipping graph-based rewrites", reason)
        return None, reason


def trace(model: nn.Module) -> fx.Graph | None:
    """The fx graph of `model` (not changed), or None when it cannot be traced (logged at WARNING)."""
    return trace_or_reason(model)[0]


def _module(model: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return model.get_submodule(str(node.target))


def activation_kind(model: nn.Module, node: fx.Node) -> str | None:
    """'linear', 'relu' or 'relu6' for nodes CLE can scale through; None otherwise."""
    mod = _module(model, node)
    if mod is not None:
        if isinstance(mod, _PASSTHROUGH):
            return "linear"
        if isinstance(mod, nn.ReLU):
            return "relu"
        if isinstance(mod, (nn.ReLU6, ChannelClip)) or (isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0)):
            return "relu6"
        return None
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return "relu"
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def conv_bn_pairs(model: nn.Module, graph: fx.Graph) -> list[tuple[str, str]]:
    """(conv, batchnorm) qualified names where the batch norm is the conv's only consumer."""
    pairs = []
    for node in graph.nodes:
        conv = _module(model, node)
        if not isinstance(conv, nn.Conv2d):
            continue
        user = _single_user(node)
        bn = _module(model, user) if user is not None else None
        if isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels and bn.track_running_stats:
            pairs.append((str(node.target), str(user.target)))
    return pairs


@dataclass(frozen=True)
class Chain:
    """conv1 -> [batchnorm] -> activations -> conv2, every step the only consumer of the one before."""

    first: str
    second: str
    bn: str | None
    acts: tuple[tuple[str, str], ...]  # (node name or module name, kind)
    shared_act: bool = False  # an activation module also used elsewhere: it cannot be replaced

    @property
    def kind(self) -> str:
        kinds = {k for _, k in self.acts} - {"linear"}
        return kinds.pop() if len(kinds) == 1 else ("linear" if not kinds else "mixed")


def _bn_act_kind(bn: nn.Module) -> str | None:
    act = getattr(bn, "act", None)  # timm BatchNormAct2d carries its activation (and dropout)
    if act is None or isinstance(act, nn.Identity):
        return "linear"
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, (nn.ReLU6, ChannelClip)):
        return "relu6"
    return None


def conv_chains(model: nn.Module, graph: fx.Graph) -> list[Chain]:
    """Pairs of convs that cross-layer equalization can rescale without changing the function."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    chains = []
    for node in graph.nodes:
        first = _module(model, node)
        if not isinstance(first, nn.Conv2d):
            continue
        cur, bn_name, acts = _single_user(node), None, []
        while cur is not None:
            mod = _module(model, cur)
            if isinstance(mod, nn.BatchNorm2d) and bn_name is None and not acts:
                kind = _bn_act_kind(mod)
                if kind is None:
                    break
                bn_name = str(cur.target)
                if kind != "linear":
                    acts.append((f"{bn_name}.act", kind))
            elif isinstance(mod, nn.Conv2d):
                if _compatible(first, mod):
                    shared = any(calls.get(name, 1) > 1 for name, _ in acts)
                    chains.append(Chain(str(node.target), str(cur.target), bn_name, tuple(acts), shared))
                break
            elif (kind := activation_kind(model, cur)) is not None:
                acts.append((str(cur.target) if cur.op == "call_module" else cur.name, kind))
            elif not (cur.op == "call_function" and cur.target is operator.getitem):
                break
            cur = _single_user(cur)
    return chains


def _compatible(first: nn.Conv2d, second: nn.Conv2d) -> bool:
    depthwise = second.groups == second.in_channels == second.out_channels
    return first.out_channels == second.in_channels and (second.groups == 1 or depthwise)
