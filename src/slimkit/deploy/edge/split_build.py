"""Train a split bottleneck (KD from the original model + lambda x rate) and write device/ and server/.

Each part is exported through slimkit.deploy.onnx_export (parity-checked) next to its weights and the
coder's prior tables; split.json says how the parts fit together.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimkit.deploy.edge.split import DevicePart, ServerPart, SplitConfig, SplitNet, build_split
from slimkit.deploy.edge.split_codec import PriorTables
from slimkit.engine.hooks import Hook, TrainState
from slimkit.errors import BadInputError

__all__ = ["RateLoss", "train_split", "write_parts", "SPLIT_FILE"]

SPLIT_FILE = "split.json"
SPLIT_VERSION = 1


class RateLoss(Hook):
    """Adds lambda x (kilobits per image under the prior) of the step's forward to the KD loss."""

    def __init__(self, lam: float) -> None:
        if lam < 0:
            raise BadInputError(f"--lambda must be >= 0, got {lam}")
        self.lam = float(lam)

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        bits = getattr(state.model, "last_bits", None)
        return None if bits is None else self.lam * bits.mean() / 1000.0


def train_split(model: nn.Module, input_size, cfg: SplitConfig, data: Any, lam: float, train_config: Any, *,
                temperature: float = 4.0, alpha: float = 0.9, progress: bool = True) -> tuple[SplitNet, dict]:
    """A new trained SplitNet (the original `model` is unchanged and is the teacher); plus the cut's shapes."""
    from slimkit.compress.distill.logit import LogitKD
    from slimkit.engine import fit

    net, shapes = build_split(copy.deepcopy(model), tuple(input_size), cfg)
    kd = LogitKD(model, temperature=temperature, alpha=alpha)
    result = fit(net, data, train_config, hooks=[RateLoss(lam)], loss_fn=kd, progress=progress)
    net.eval()
    net.set_support_(*net.prior.tables())
    return net, {**shapes, "train_history": result.history}


def _save_part(part: nn.Module, folder: Path, size, check: torch.Tensor, tables: PriorTables) -> dict:
    from safetensors.torch import save_file

    from slimkit.deploy.onnx_export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in part.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))
    tables.save(folder / "prior.json")
    return export_onnx(part, size, folder / "model.onnx", check_inputs=check).to_dict()


def write_parts(net: SplitNet, shapes: dict, input_size, out: Path, check: torch.Tensor, meta: dict) -> PriorTables:
    """Write out/device and out/server (ONNX + weights + prior tables) and out/split.json."""
    lows, pmfs = net.prior.tables()
    tables = PriorTables(lows, pmfs)
    device, server = DevicePart(net).eval(), ServerPart(net).eval()
    with torch.no_grad():
        codes = device(check)
    exports = {"device": _save_part(device, out / "device", input_size, check, tables),
               "server": _save_part(server, out / "server", shapes["code_shape"], codes, tables)}
    spec = {"version": SPLIT_VERSION, "device": "device/model.onnx", "server": "server/model.onnx",
            "prior": "prior.json", "input_size": list(input_size), **{k: shapes[k] for k in
                                                                     ("at", "cut_shape", "code_shape")}, **meta}
    (out / SPLIT_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    shapes["exports"] = exports
    return tables
