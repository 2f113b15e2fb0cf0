"""Why layers are kept whole: every refusal of the pruner names the modules that stop it.

`frozen_reasons` maps each frozen object (a protected module and its parts, an op whose channel
mapping Torch-Pruning cannot follow, an ignored prefix, a depthwise conv with a channel multiplier)
to a short reason naming the model's module. `plan_groups` attaches, to every layer of a group it
leaves out, the reason of the first frozen object the group reached (`Plan.whole`), and
`kept_whole_summary` turns that into the sentence a refusal ends with: the share of the MACs in
layers no group can prune, and the largest of them with their reasons.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["frozen_reasons", "group_reason", "kept_whole_summary"]


def frozen_reasons(model: nn.Module, protected: list[nn.Module], ignored: list[str], unsafe: list, graph,
                   records: dict, unsupported: list[nn.Module]) -> dict[int, str]:
    names = {m: n for n, m in model.named_modules()}
    reasons: dict[int, str] = {}

    def mark(root: nn.Module, reason: str) -> None:
        for m in root.modules():
            reasons.setdefault(id(m), reason)
        for p in root.parameters():
            reasons.setdefault(id(p), reason)

    for m in protected:
        mark(m, f"inside {names.get(m, '?')} ({type(m).__name__}), kept whole: attention internals not mappable")
    for prefix in ignored:
        for n, m in model.named_modules():
            if n and (n == prefix or n.startswith(prefix + ".")):
                mark(m, f"inside {n}, ignored or protected after its forward broke")
    for m in unsupported:
        reasons[id(m)] = f"{names.get(m, '?')} is a depthwise conv with a channel multiplier"
    for op in unsafe:
        node = graph.module2node.get(op)
        rec = records.get(getattr(node, "grad_fn", None))
        owner = getattr(rec, "owner", None)
        where = f"{names.get(owner) or 'the model'} ({type(owner).__name__})" if owner is not None else "the model"
        what = f"`{rec.func}` {list(rec.in_shape)} -> {list(rec.out_shape)}" if rec is not None else f"{type(op).__name__}"
        reasons[id(op)] = f"its channels reach {what} in {where}, a channel mapping Torch-Pruning cannot follow"
    return reasons


def group_reason(group, reasons: dict[int, str]) -> str | None:
    for dep, _ in group:
        for obj in (dep.target.module, dep.source.module):
            if id(obj) in reasons:
                return reasons[id(obj)]
    return None


def kept_whole_summary(plan, stats: dict[str, dict], top: int = 2) -> str:
    """'N% of the MACs are in layers kept whole: LAYER (REASON); ...' for the layers of no group."""
    covered = {name for g in plan.groups for name, _, _ in g.dims}
    total = sum(s["macs"] for s in stats.values()) or 1
    whole = sorted(((s["macs"], n) for n, s in stats.items() if n not in covered and s["macs"]), reverse=True)
    if not whole:
        return "every layer is in a prunable group"
    share = sum(macs for macs, _ in whole) / total
    shown = "; ".join(f"{n} ({plan.whole.get(n, 'not in any channel group it could prune')})" for _, n in whole[:top])
    return f"{share:.0%} of the MACs are in layers kept whole, the largest: {shown}"
