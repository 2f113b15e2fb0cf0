"""`PatchedModel`: runs the head of a network patch by patch into one stitched map, then the tail whole.

Each patch keeps only its own intermediate tensors alive and frees each one after its last reader, so
the head's activation memory is one patch's worth plus the input and the stitched cut map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from slimkit.deploy.edge.graph import Traced, tail_module
from slimkit.deploy.edge.plan import PatchPlan, Step
from slimkit.deploy.edge.regions import run_windowed, windowed_callable
from slimkit.errors import BadInputError

__all__ = ["PatchedModel"]


def _crop(x: torch.Tensor, have: tuple[int, int, int, int], want: tuple[int, int, int, int]) -> torch.Tensor:
    return x[:, :, want[0] - have[0]: want[1] - have[0], want[2] - have[2]: want[3] - have[2]]


class PatchedModel(nn.Module):
    """A new module computing the same function as the traced model (whose weights it shares)."""

    def __init__(self, traced: Traced, plan: PatchPlan) -> None:
        super().__init__()
        self.gm = traced.gm
        self.tail = tail_module(traced, plan.cut)
        self.plan = plan
        self.input_size = traced.input_size
        self._nodes = {n.name: n for n in traced.nodes}
        self._kinds = traced.kinds
        self._cut_shape = traced.shapes[plan.cut.node][1:]
        modules = dict(self.gm.named_modules())
        self._windowed = {name: windowed_callable(self._nodes[name], modules)
                          for name, (kind, _) in traced.kinds.items() if kind == "window"}
        self._fill = {name: w.fill for name, (kind, w) in traced.kinds.items() if kind == "window"}
        self._last_reader = [self._last_readers(steps) for steps in plan.patches]
        self._input_name = traced.nodes[0].name
        self._consts = {n.name: n.target for n in traced.nodes if n.op == "get_attr"}

    @staticmethod
    def _last_readers(steps: list[Step]) -> dict[int, list[str]]:
        last: dict[str, int] = {}
        for i, step in enumerate(steps):
            for src in step.crops:
                last[src] = i
        out: dict[int, list[str]] = {}
        for src, i in last.items():
            out.setdefault(i, []).append(src)
        return out

    def _run_step(self, step: Step, env: dict[str, tuple[torch.Tensor, Any]]) -> torch.Tensor:
        node = self._nodes[step.node]
        crops = {src: _crop(env[src][0], env[src][1], want) for src, want in step.crops.items()}
        if step.node in self._windowed:
            (x,) = crops.values()
            return run_windowed(self._windowed[step.node], x, step.pads, self._fill[step.node])
        args = fx.node.map_arg(node.args, lambda a: self._value(a.name, crops))
        kwargs = fx.node.map_arg(node.kwargs, lambda a: self._value(a.name, crops))
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            partial = any(want != env[src][1] for src, want in step.crops.items())
            if partial and getattr(module, "inplace", False):
                # an in-place op on a crop would also write into a stored map that another reader may need
                args = fx.node.map_aggregate(args, lambda a: a.clone() if isinstance(a, torch.Tensor) else a)
            return module(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _value(self, name: str, crops: dict[str, torch.Tensor]):
        if name in crops:
            return crops[name]
        if name in self._consts:  # a weight or buffer read by functional code
            return self._const(self._consts[name])
        raise BadInputError(f"patched op reads {name}, which is not a cropped map or a constant")

    def _const(self, target: str) -> torch.Tensor:
        module, _, attr = target.rpartition(".")
        return getattr(self.gm.get_submodule(module) if module else self.gm, attr)

    def _run_patch(self, x: torch.Tensor, k: int, out: torch.Tensor) -> None:
        steps, tile = self.plan.patches[k], self.plan.tiles[k]
        full = (0, x.shape[2], 0, x.shape[3])
        env: dict[str, tuple[torch.Tensor, Any]] = {self._input_name: (x, full)}
        for i, step in enumerate(steps):
            env[step.node] = (self._run_step(step, env), step.region)
            for src in self._last_reader[k].get(i, ()):
                if src != self._input_name:
                    del env[src]
        out[:, :, tile[0]: tile[1], tile[2]: tile[3]] = env.pop(self.plan.cut.node)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(self.input_size):
            raise BadInputError(f"this patched model was planned for input {self.input_size}, got {tuple(x.shape[1:])}")
        out = x.new_empty(x.shape[0], *self._cut_shape)
        for k in range(len(self.plan.tiles)):
            self._run_patch(x, k, out)
        return self.tail(out)
