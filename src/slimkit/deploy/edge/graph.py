"""The traced model patch-based inference works on: node order, full-map shapes, op kinds, and the
places where the network can be cut into a patched head and a whole-map tail."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from slimkit.deploy.edge.regions import Window, op_kind
from slimkit.errors import BadInputError

__all__ = ["Traced", "Cut", "trace_model"]


@dataclass
class Cut:
    """A point after node `index` where one 4-D tensor is all that flows on, with only local ops before."""

    index: int
    node: str
    labels: list[str]  # module paths that end exactly here (outermost first), else the node name

    @property
    def label(self) -> str:
        return self.labels[0]


@dataclass
class Traced:
    gm: fx.GraphModule
    nodes: list[fx.Node]
    shapes: dict[str, tuple[int, ...]]
    kinds: dict[str, tuple[str, Window | None]]
    cuts: list[Cut] = field(default_factory=list)
    input_size: tuple[int, int, int] = (3, 224, 224)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.gm.named_modules())

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """Input nodes that carry a spatial map (constants and shapes excluded)."""
        return [a for a in node.all_input_nodes if a.name in self.shapes and len(self.shapes[a.name]) == 4]

    def find_cut(self, name: str, flag: str = "--until") -> Cut:
        for cut in self.cuts:
            if name in cut.labels or name == cut.node:
                return cut
        hint = ", ".join(c.label for c in self.cuts[-8:]) or "none"
        raise BadInputError(f"{flag} {name}: not a point where the network can be cut after local ops only "
                            f"(possible: {hint})")


def _shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(example)
    out = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            out[node.name] = tuple(int(s) for s in meta.shape)
    return out


def _module_ends(nodes: list[fx.Node]) -> dict[int, list[str]]:
    """Node index -> module paths whose last node it is (outermost first)."""
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for path in node.meta.get("nn_module_stack", {}) or {}:
            last[path] = i
    ends: dict[int, list[str]] = {}
    for path, i in last.items():
        ends.setdefault(i, []).append(path)
    return {i: sorted(paths, key=lambda p: (p.count("."), p)) for i, paths in ends.items()}


def _find_cuts(t: Traced) -> list[Cut]:
    """Walk forward while every op is local; a cut is where exactly one live 4-D tensor crosses."""
    index = {n.name: i for i, n in enumerate(t.gm.graph.nodes)}
    last_use = {n.name: max((index[u.name] for u in n.users), default=i) for i, n in enumerate(t.nodes)}
    ends, cuts = _module_ends(t.nodes), []
    for i, node in enumerate(t.nodes):
        kind = t.kinds[node.name][0]
        if node.op == "placeholder" or kind in ("const", "check"):
            continue
        if kind == "unsupported" or len(t.shapes.get(node.name, ())) != 4:
            break
        # constants are re-read by the tail, so they do not count as tensors crossing the cut
        live = [n for n in t.nodes[: i + 1] if last_use[n.name] > i and t.kinds[n.name][0] != "const"]
        if [n.name for n in live] == [node.name]:
            cuts.append(Cut(i, node.name, ends.get(i, []) + [node.name]))
    return cuts


def trace_model(model: nn.Module, input_size: tuple[int, int, int]) -> Traced:
    """Trace `model` (unchanged, eval mode expected) with torch.fx and find its cut points."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        raise BadInputError(f"patch-based inference needs a model torch.fx can trace: {exc}") from exc
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    if sum(n.op == "placeholder" for n in nodes) != 1:
        raise BadInputError("patch-based inference needs a model with exactly one input tensor")
    modules = dict(gm.named_modules())
    with torch.no_grad():
        shapes = _shapes(gm, torch.zeros(1, *input_size))
    kinds = {n.name: (("input", None) if n.op == "placeholder" else op_kind(n, modules)) for n in nodes}
    t = Traced(gm, nodes, shapes, kinds, input_size=tuple(input_size))
    t.cuts = _find_cuts(t)
    if not t.cuts:
        raise BadInputError("no cut point: the model's first op is not a local conv/pool/elementwise op")
    return t


def tail_module(t: Traced, cut: Cut) -> fx.GraphModule:
    """A GraphModule running everything after `cut` on the cut tensor (sharing the model's submodules)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    x = graph.placeholder("x")
    env[t.nodes[cut.index]] = x
    head = list(t.gm.graph.nodes)[: cut.index + 1]
    for node in head:  # constants the tail reads too
        if node.op == "get_attr":
            env[node] = graph.node_copy(node)
    for node in list(t.gm.graph.nodes)[cut.index + 1:]:
        if node.op == "placeholder":
            continue
        env[node] = graph.node_copy(node, lambda a: env[a])
    return fx.GraphModule(t.gm, graph)


def head_module(t: Traced, cut: Cut) -> fx.GraphModule:
    """A GraphModule running everything up to and including `cut`, returning the cut tensor."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in list(t.gm.graph.nodes)[: cut.index + 1]:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(env[t.nodes[cut.index]])
    return fx.GraphModule(t.gm, graph)
