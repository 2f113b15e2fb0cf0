"""What every runtime exporter shares: the report, staged writes, check inputs and converter errors."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.runtime import RuntimeCheck
from slimkit.errors import BadInputError, SlimkitError

__all__ = ["ArtifactReport", "staged", "check_images", "conversion_error", "quiet_convert", "torch_reference",
           "DEFAULT_ATOL", "INT8_ATOL", "example_input"]

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4  # fp32 artifacts: as the ONNX export check
# int8 artifacts against their fake-quant reference: integer kernels round and requantize differently from the
# float simulation, and the differences add up with depth. Measured on resnet18 at 224 (logit scale ~10):
# ORT int8 3.5-6% of the scale, OpenVINO 6-11%, while int8 itself moved the logits 10-14% from fp32.
INT8_ATOL = 0.15


@dataclass
class ArtifactReport:
    """One exported, checked artifact."""

    runtime: str
    precision: str  # "fp32" | "int8"
    path: str
    files: list[str]  # every file the artifact consists of (OpenVINO IR: .xml and .bin)
    size_bytes: int
    converter: str
    batch: str  # "dynamic" or the fixed batch size
    input_size: list[int]
    check: RuntimeCheck
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["check"] = self.check.to_dict()
        return data


@contextlib.contextmanager
def staged(path: str | os.PathLike, suffixes: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temp file path beside `path`; on success move it (and its `suffixes` siblings) into place.

    On any error nothing is left behind: a failed check writes nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        yield tmp
        for suffix in suffixes:  # siblings first: the main file appearing means the artifact is complete
            os.replace(tmp.with_suffix(suffix), path.with_suffix(suffix))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def example_input(input_size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) <= 0:
        raise BadInputError(f"input size must be (C, H, W) with positive dims, got {list(size)}")
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))


def check_images(input_size: Sequence[int], given: torch.Tensor | np.ndarray | None, count: int = 4,
                 seed: int = 0) -> tuple[np.ndarray, str]:
    """The check's inputs: the given (real) images, or seeded N(0, 1) noise when none are given."""
    if given is not None and len(given):
        x = given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else np.asarray(given)
        if tuple(x.shape[1:]) != tuple(input_size):
            raise BadInputError(f"check images have shape {list(x.shape[1:])}, the model takes {list(input_size)}")
        return np.ascontiguousarray(x, dtype=np.float32), "given"
    return example_input(input_size, count, seed).numpy(), "random N(0, 1)"


def torch_reference(model: nn.Module):
    """`x -> [outputs]` of the (unchanged) PyTorch model, flattened like the exported graph's outputs."""
    from slimkit.deploy.onnx_export import _flatten

    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.detach().float().cpu().numpy() for t in _flatten(model(torch.from_numpy(x).to(device)))]

    return run


@contextlib.contextmanager
def quiet_convert() -> Iterator[None]:
    """Converters print progress and warn at length; keep the library quiet (details at --debug)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# Op names as the converters spell them: aten::foo / aten.foo.default / torch.ops.aten.foo
_OP_PATTERNS = (r"aten::[A-Za-z0-9_]+", r"aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?", r"torch\.ops\.[A-Za-z0-9_.]+")


def failed_op(text: str) -> str | None:
    for pattern in _OP_PATTERNS:
        match = re.search(pattern, text)
        if match:
            return match.group(0)
    return None


def conversion_error(runtime: str, exc: BaseException) -> SlimkitError:
    """A converter's failure as one line naming the runtime and, where it says, the op."""
    if isinstance(exc, SlimkitError):
        return exc
    text = str(exc)
    op = failed_op(text) or failed_op(repr(exc.__cause__) if exc.__cause__ else "")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    where = f"unsupported op {op}" if op else "conversion failed"
    return BadInputError(f"{runtime}: cannot convert the model: {where} ({type(exc).__name__}: {first[:300]})")
