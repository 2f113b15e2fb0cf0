"""Train a split bottleneck (KD from the original model + lambda x rate) and write device/ and server/.

Each part is a slimkit model directory (reloadable by every command), exported through
slimkit.deploy.onnx_export (parity-checked) beside the coder's prior tables; split.json says how the parts fit.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from slimkit.deploy.edge.split import DevicePart, ServerPart, SplitConfig, SplitNet, build_split
from slimkit.deploy.edge.split_codec import PriorTables
from slimkit.engine.hooks import Hook, TrainState
from slimkit.errors import BadInputError
from slimkit.models.resolve import ModelInfo
from slimkit.utils.io import atomic_write_json

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
                work: Path | None = None, hooks: Sequence[Hook] = (), temperature: float = 4.0, alpha: float = 0.9,
                progress: bool = True) -> tuple[SplitNet, dict]:
    """A new trained SplitNet (the original `model` is unchanged and is the teacher); plus the cut's shapes.

    With `work`, the engine checkpoints there after every epoch and a rerun on the same folder resumes from
    the last completed epoch (to the same weights as an uninterrupted run)."""
    from slimkit.compress.distill.logit import LogitKD
    from slimkit.engine import fit
    from slimkit.engine.checkpoint import CHECKPOINT_FILE

    with torch.random.fork_rng():  # the new layers' initial weights follow the run's seed, as its batches do
        torch.manual_seed(train_config.seed)
        net, shapes = build_split(copy.deepcopy(model).requires_grad_(True), tuple(input_size), cfg)
    # KD freezes its teacher in place: a copy keeps `model` (and a later lambda's student copy) trainable
    kd = LogitKD(copy.deepcopy(model), temperature=temperature, alpha=alpha)
    resume = work is not None and (Path(work) / CHECKPOINT_FILE).is_file()
    result = fit(net, data, train_config, hooks=[RateLoss(lam), *hooks], loss_fn=kd, progress=progress,
                 out_dir=work, resume=resume, overwrite=True)
    net.eval()
    net.set_support_(*net.prior.tables())
    return net, {**shapes, "train_history": result.history, "resumed": resume}


def write_parts(net: SplitNet, shapes: dict, cfg: SplitConfig, out: Path, check: torch.Tensor, parent: nn.Module,
                parent_info: ModelInfo, meta: dict) -> PriorTables:
    """Write out/device and out/server (model directories + ONNX + prior tables) and out/split.json.

    Each half is a slimkit model directory checked to reload with identical outputs, and its ONNX export is
    parity-checked by slimkit.deploy.onnx_export."""
    from slimkit.deploy.edge.split_dir import part_info, save_part
    from slimkit.deploy.onnx_export import export_onnx

    tables = PriorTables(*net.prior.tables())
    device, server = DevicePart(net).eval(), ServerPart(net).eval()
    with torch.no_grad():
        codes = device(check)
    exports = {}
    for name, part, example in (("device", device, check), ("server", server, codes)):
        info = part_info(name, parent_info, cfg, shapes)
        save_part(part, info, out / name, parent, example)
        tables.save(out / name / "prior.json")
        exports[name] = export_onnx(part, info.input_size, out / name / "model.onnx", check_inputs=example).to_dict()
    spec = {"version": SPLIT_VERSION, "device": "device/model.onnx", "server": "server/model.onnx",
            "prior": "prior.json", "input_size": list(parent_info.input_size),
            **{k: shapes[k] for k in ("at", "cut_shape", "code_shape")}, **meta}
    atomic_write_json(out / SPLIT_FILE, spec)
    shapes["exports"] = exports
    return tables
