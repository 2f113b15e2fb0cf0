"""Entropy coding of the split bottleneck with `constriction`'s range coder (optional extra `split`).

The prior's tables (lowest symbol and pmf per channel) are all the device and the server share; a
bitstream holds one image's symbols channel by channel, each channel under its own categorical model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slimkit.errors import BadInputError

__all__ = ["PriorTables", "encode", "decode"]


def _constriction():
    try:
        import constriction
    except ImportError:
        raise BadInputError("split computing needs the `constriction` package: pip install 'slimkit[split]'") from None
    return constriction


class PriorTables:
    """The coder's per-channel models, built once from (lows, pmfs) and saved as prior.json."""

    def __init__(self, lows: list[int], pmfs: list[list[float]]) -> None:
        family = _constriction().stream.model.Categorical
        self.lows, self.pmfs = [int(v) for v in lows], [np.asarray(p, np.float64) for p in pmfs]
        self.models = [family(p, perfect=False) for p in self.pmfs]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"lows": self.lows, "pmfs": [p.tolist() for p in self.pmfs]}) + "\n")

    @classmethod
    def load(cls, path: Path) -> "PriorTables":
        data = json.loads(Path(path).read_text())
        return cls(data["lows"], data["pmfs"])


def encode(symbols: np.ndarray, tables: PriorTables) -> bytes:
    """One image's integer symbols (C, h, w) -> its bitstream."""
    encoder = _constriction().stream.queue.RangeEncoder()
    for c, model in enumerate(tables.models):
        values = symbols[c].astype(np.int64).ravel() - tables.lows[c]
        if values.min() < 0 or values.max() >= len(tables.pmfs[c]):
            raise BadInputError(f"channel {c} holds a symbol outside its coded support")
        encoder.encode(values.astype(np.int32), model)
    return encoder.get_compressed().tobytes()


def decode(stream: bytes, tables: PriorTables, shape: tuple[int, int, int]) -> np.ndarray:
    """A bitstream -> the integer symbols (C, h, w) as float32, exactly as the device produced them."""
    decoder = _constriction().stream.queue.RangeDecoder(np.frombuffer(stream, dtype=np.uint32).copy())
    count = shape[1] * shape[2]
    planes = [decoder.decode(model, count) + low for model, low in zip(tables.models, tables.lows)]
    return np.stack(planes).reshape(shape).astype(np.float32)
