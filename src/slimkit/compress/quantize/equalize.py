"""Cross-layer equalization (data-free; Nagel et al., "Data-Free Quantization", 2019), in PyTorch, before export.

For conv1 -> [BN] -> act -> conv2 with a positively homogeneous act (ReLU, identity), output channel i
of conv1 is divided by s_i and input channel i of conv2 multiplied by s_i, with
s_i = sqrt(r1_i / r2_i) (r = max |w| of that channel). Both ranges become sqrt(r1_i * r2_i), which
evens out per-channel weight ranges (depthwise convs suffer most from uneven ranges) and leaves the
float function unchanged. ReLU6 is not homogeneous; policy `relu6`:
  "clip": replace it by a per-channel clip at 6 / s_i (exact; adds a Min node in ONNX),
  "relu": replace it by ReLU as the paper does (changes the function where activations exceed 6),
  "skip": leave those pairs alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from slimkit.compress.quantize.fold import fold_batchnorm_
from slimkit.compress.quantize.torch_graph import Chain, ChannelClip, conv_chains, trace_or_reason
from slimkit.errors import BadInputError

__all__ = ["ChannelClip", "EqualizeReport", "equalize_", "channel_ranges"]

log = logging.getLogger(__name__)


@dataclass
class EqualizeReport:
    folded: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (first, second, why)
    iterations: int = 0
    max_log_scale: float = 0.0  # of the last sweep: ~0 when converged
    error: str | None = None  # why equalization could not run at all (the model cannot be traced)

    @property
    def applied(self) -> bool:
        return self.error is None


def channel_ranges(conv: nn.Conv2d, as_input: bool) -> torch.Tensor:
    """max |w| per output channel, or per input channel (`as_input`; depthwise: per filter)."""
    w = conv.weight.detach().abs()
    if not as_input or conv.groups > 1:  # depthwise: input channel i is filter i
        return w.flatten(1).amax(1)
    return w.transpose(0, 1).flatten(1).amax(1)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def _scale_pair(model: nn.Module, chain: Chain, relu6: str) -> float:
    first, second = model.get_submodule(chain.first), model.get_submodule(chain.second)
    r1, r2 = channel_ranges(first, False), channel_ranges(second, True)
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-30)), torch.ones_like(r1))
    first.weight.div_(s.view(-1, 1, 1, 1))
    if first.bias is not None:
        first.bias.div_(s)
    shape = (-1, 1, 1, 1) if second.groups > 1 else (1, -1, 1, 1)
    second.weight.mul_(s.view(shape))
    for name, kind in chain.acts:
        if kind == "relu6":
            _rescale_relu6(model, name, s, relu6)
    return float(s.log().abs().max())


def _rescale_relu6(model: nn.Module, name: str, s: torch.Tensor, relu6: str) -> None:
    current = model.get_submodule(name)
    if relu6 == "relu":
        _set_module(model, name, nn.ReLU())
        return
    upper = current.upper.flatten() if isinstance(current, ChannelClip) else torch.full_like(s, 6.0)
    _set_module(model, name, ChannelClip(upper / s))


def _usable(chain: Chain, relu6: str) -> str | None:
    if chain.kind == "mixed":
        return "mixed activations"
    if chain.kind == "relu6" and relu6 == "skip":
        return "relu6 (policy skip)"
    if chain.kind == "relu6" and chain.shared_act:
        return "relu6 module shared with other layers"
    return None


@torch.no_grad()
def equalize_(model: nn.Module, relu6: str = "clip", iterations: int = 100, tol: float = 1e-4) -> EqualizeReport:
    """Fold batch norms, then equalize conv pairs across layers (model changed in place)."""
    if relu6 not in ("clip", "relu", "skip"):
        raise BadInputError(f"relu6 policy must be clip, relu or skip, got {relu6!r}")
    report = EqualizeReport(folded=len(fold_batchnorm_(model)))
    graph, report.error = trace_or_reason(model)
    if graph is None:
        log.warning("cross-layer equalization not applied: %s", report.error)
        return report
    chains = []
    for chain in conv_chains(model, graph):
        why = _usable(chain, relu6)
        if why:
            report.skipped.append((chain.first, chain.second, why))
        else:
            chains.append(chain)
    report.pairs = [(c.first, c.second) for c in chains]
    for report.iterations in range(1, iterations + 1):
        report.max_log_scale = max([_scale_pair(model, c, relu6) for c in chains], default=0.0)
        if report.max_log_scale < tol:
            break
    log.info("equalized %d conv pairs in %d sweeps (%d skipped)", len(chains), report.iterations, len(report.skipped))
    return report
