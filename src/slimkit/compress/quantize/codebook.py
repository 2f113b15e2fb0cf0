"""Weight-only codebook compression with learnable centroids and mappings.

After "Network Memory Footprint Compression Through Jointly Learnable Codebooks and Mappings" (JLCM):
  1. group output channels with similar weight spread (sorted by std, split into `groups` chunks), so
     each group gets its own codebook; the group of a channel costs 1 byte per channel, not per weight;
  2. per group, 1-D k-means gives 2**bits centroids, and each weight maps to its nearest centroid;
  3. optional fine-tuning learns both: the forward uses C[group, nearest(W)], gradients reach the
     centroids C directly and the latent weights W straight through, so a mapping only moves to a
     neighbouring centroid as W drifts (a proximal search rather than jumps to extreme values).
Stored as safetensors: per compressed layer, fp16 centroids + bit-packed indices + channel groups;
everything else as in the model. Decoding rebuilds a plain model with the same architecture.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.compress.quantize.config import CodebookConfig
from slimkit.errors import BadInputError

__all__ = ["CodebookLayer", "CodebookResult", "codebook_compress", "save_codebook", "load_codebook_", "kmeans_1d"]

log = logging.getLogger(__name__)
FORMAT = "slimkit-codebook"


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    """Sorted centroids of 1-D k-means (Lloyd), initialised at evenly spaced quantiles."""
    v = values.detach().flatten().float()
    k = max(1, min(k, v.numel()))
    c = torch.quantile(v, torch.linspace(0, 1, k)).unique()
    for _ in range(iters):
        idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
        sums = torch.zeros_like(c).index_add_(0, idx, v)
        counts = torch.zeros_like(c).index_add_(0, idx, torch.ones_like(v))
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c).sort().values
    return F.pad(c, (0, k - c.numel()), value=float(c[-1])) if c.numel() < k else c


class CodebookLayer(nn.Module):
    """A Conv2d/Linear whose weight is C[group(channel), nearest centroid] with learnable C and latent W."""

    def __init__(self, layer: nn.Module, config: CodebookConfig):
        super().__init__()
        self.layer = layer
        w = layer.weight.detach()
        order = w.flatten(1).std(1).argsort()
        groups = torch.empty(w.shape[0], dtype=torch.long)
        for g, chunk in enumerate(order.chunk(min(config.groups, w.shape[0]))):
            groups[chunk] = g
        self.register_buffer("groups", groups)
        k = 2**config.bits
        self.centroids = nn.Parameter(torch.stack([kmeans_1d(w[groups == g], k, config.kmeans_iters)
                                                   for g in range(int(groups.max()) + 1)]))

    def indices(self) -> torch.Tensor:
        """Nearest centroid of each weight within its channel's codebook (same shape as the weight)."""
        w = self.layer.weight.detach()
        idx = torch.empty(w.shape, dtype=torch.long)
        for g in range(self.centroids.shape[0]):
            rows = self.groups == g
            sorted_c, perm = self.centroids.detach()[g].sort()
            # 1-D nearest neighbour = bucket between midpoints; memory O(weights), not O(weights x k)
            idx[rows] = perm[torch.bucketize(w[rows], (sorted_c[1:] + sorted_c[:-1]) / 2)]
        return idx

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        idx = self.indices()
        cents = self.centroids[self.groups]  # (out, k), differentiable in the centroids
        wq = torch.gather(cents, 1, idx.flatten(1)).view_as(w)
        return wq + (w - w.detach())  # value C[idx]; gradient also reaches the latent weight (STE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wq = self.quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, wq, self.layer.bias)
        return F.linear(x, wq, self.layer.bias)


@dataclass
class CodebookResult:
    model: nn.Module  # plain decoded model: same architecture, shared weight values
    codes: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # layer -> centroids, indices, groups
    bits: int = 4
    history: list[float] = field(default_factory=list)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def codebook_compress(model: nn.Module, config: CodebookConfig | None = None, x: torch.Tensor | None = None,
                      y: torch.Tensor | None = None, seed: int = 0) -> CodebookResult:
    """A new model whose conv/linear weights come from per-layer codebooks (fine-tuned when data is given)."""
    config = config or CodebookConfig()
    work = copy.deepcopy(model).eval()
    names = [n for n, m in work.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() >= config.min_params]
    for name in names:
        _replace(work, name, CodebookLayer(work.get_submodule(name), config))
    history: list[float] = []
    if config.epochs > 0 and x is not None and y is not None:
        from slimkit.engine import TrainConfig, device_of, fit

        train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=0.0,
                            schedule="constant", seed=seed, device=device_of(work))
        history = [record["train_loss"] for record in fit(work, (x, y), train, progress=False).history]
    result = CodebookResult(work, {}, config.bits, history)
    with torch.no_grad():
        for name in names:
            cb = work.get_submodule(name)
            cents = cb.centroids.detach().half()  # stored as fp16: decode from exactly what is stored
            idx = cb.indices()
            cb.layer.weight.copy_(torch.gather(cents.float()[cb.groups], 1, idx.flatten(1)).view_as(idx))
            result.codes[name] = {"centroids": cents, "indices": idx.to(torch.uint8), "groups": cb.groups.to(torch.uint8)}
            _replace(work, name, cb.layer)
    return result


def _pack(idx: np.ndarray, bits: int) -> np.ndarray:
    planes = (idx.reshape(-1, 1).astype(np.uint16) >> np.arange(bits)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (planes.astype(np.int64) << np.arange(bits)).sum(1)


def save_codebook(result: CodebookResult, path: str | os.PathLike) -> Path:
    """Write the compressed weights (atomically) as safetensors; returns the path."""
    from safetensors.numpy import save

    from slimkit.utils.io import atomic_write_bytes

    tensors, layers = {}, {}
    for name, code in result.codes.items():
        idx = code["indices"].numpy()
        tensors[f"{name}.weight.codebook"] = code["centroids"].numpy()
        tensors[f"{name}.weight.indices"] = _pack(idx, result.bits)
        tensors[f"{name}.weight.groups"] = code["groups"].numpy()
        layers[name] = list(idx.shape)
    skip = {f"{n}.weight" for n in result.codes}
    for key, value in result.model.state_dict().items():
        if key not in skip:
            tensors[key] = value.detach().cpu().numpy()
    meta = {"format": FORMAT, "version": "1", "bits": str(result.bits), "layers": json.dumps(layers)}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


@torch.no_grad()
def load_codebook_(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load compressed weights from `path` into `model` (same architecture; changed in place)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise BadInputError(f"{path} is not a slimkit codebook file")
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (OSError, ValueError, SafetensorError) as exc:
        raise BadInputError(f"cannot read codebook file {path}: {exc}") from exc
    bits, state = int(meta["bits"]), {}
    for name, shape in json.loads(meta["layers"]).items():
        idx = _unpack(arrays.pop(f"{name}.weight.indices"), bits, int(np.prod(shape))).reshape(shape[0], -1)
        cents = arrays.pop(f"{name}.weight.codebook").astype(np.float32)[arrays.pop(f"{name}.weight.groups")]
        state[f"{name}.weight"] = torch.from_numpy(np.take_along_axis(cents, idx, 1).reshape(shape))
    state.update({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    model.load_state_dict(state, strict=True)
    return model
