"""Measure a split directory on real bitstreams, against input codecs and naive 8-bit feature split.

Everything is counted in bytes actually produced: the range coder's output for the split, Pillow's
files for JPEG/WebP/PNG of the stored uint8 images, zstd (else zlib) of 8-bit cut features.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slimkit.deploy.edge.split_codec import PriorTables, decode, encode

__all__ = ["SplitRunner", "measure_split", "input_codec_rows", "naive_split_row", "compare", "top1_of"]

INPUT_CODECS = [("JPEG", q) for q in (5, 10, 30, 50, 75, 95)] + [("WEBP", q) for q in (0, 5, 10, 30, 50, 75, 95)] + [
    ("PNG", None)]


class SplitRunner:
    """Run a saved split directory: device ONNX -> range coder -> bytes -> decoder -> server ONNX."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from slimkit.deploy.onnx_export import ort_session

        path = Path(path)
        self.spec = json.loads((path / "split.json").read_text())
        self.device = ort_session(path / self.spec["device"], threads)
        self.server = ort_session(path / self.spec["server"], threads)
        self.tables = PriorTables.load(path / "device" / self.spec["prior"])
        self.code_shape = tuple(self.spec["code_shape"])

    def symbols(self, x: np.ndarray) -> np.ndarray:
        return self.device.run(None, {self.device.get_inputs()[0].name: x.astype(np.float32)})[0]

    def logits(self, codes: np.ndarray) -> np.ndarray:
        return self.server.run(None, {self.server.get_inputs()[0].name: codes.astype(np.float32)})[0]

    def streams(self, x: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """(one bitstream per image, the device's symbols) for a batch."""
        codes = self.symbols(x)
        return [encode(c, self.tables) for c in codes], codes


def measure_split(runner: SplitRunner, x: np.ndarray, y: np.ndarray, batch: int = 256) -> dict:
    """Bytes per image, top-1 through the server on the decoded symbols, and whether decoding was exact."""
    sizes, correct, exact, clamped = [], 0, True, 0
    for i in range(0, len(x), batch):
        streams, codes = runner.streams(x[i: i + batch])
        decoded = np.stack([decode(s, runner.tables, runner.code_shape) for s in streams])
        exact = exact and bool(np.array_equal(decoded, codes))
        lows = np.array(runner.tables.lows).reshape(1, -1, 1, 1)
        highs = lows + np.array([len(p) - 1 for p in runner.tables.pmfs]).reshape(1, -1, 1, 1)
        clamped += int(((codes == lows) | (codes == highs)).sum())
        sizes += [len(s) for s in streams]
        correct += int((runner.logits(decoded).argmax(1) == y[i: i + batch]).sum())
    return {"bytes_mean": float(np.mean(sizes)), "bytes_p90": float(np.percentile(sizes, 90)),
            "top1": 100.0 * correct / len(y), "decoded_exact": exact, "images": len(y),
            "symbols_at_support_edge": clamped / (len(y) * int(np.prod(runner.code_shape)))}


def _pillow_roundtrip(img: np.ndarray, fmt: str, quality: int | None) -> tuple[int, np.ndarray]:
    from PIL import Image

    pil = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
    buf = io.BytesIO()
    options = {"optimize": True} if fmt == "PNG" else {"quality": quality}
    pil.save(buf, format=fmt, **options)
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(pil.mode))
    return buf.tell(), (back[None] if back.ndim == 2 else back.transpose(2, 0, 1))


def top1_of(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    from slimkit.engine.evaluate import logits_of

    with torch.no_grad():
        pred = torch.cat([logits_of(model(x[i: i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return 100.0 * float((pred.numpy() == y).mean())


def input_codec_rows(model: nn.Module, dataset, y: np.ndarray) -> list[dict]:
    """Each codec at each quality: bytes per stored uint8 image, and the original model's top-1 on the decoded."""
    images = dataset.images.numpy()
    rows = []
    for fmt, quality in INPUT_CODECS:
        pairs = [_pillow_roundtrip(img, fmt, quality) for img in images]
        decoded = dataset.transform(torch.from_numpy(np.stack([p[1] for p in pairs])))
        rows.append({"codec": fmt if quality is None else f"{fmt} q{quality}",
                     "bytes_mean": float(np.mean([p[0] for p in pairs])), "top1": top1_of(model, decoded, y)})
    return rows


def _compressor():
    try:
        import zstandard

        return "zstd-19", zstandard.ZstdCompressor(level=19).compress
    except ImportError:  # zstandard is optional; zlib is in the standard library
        import zlib

        return "zlib-9 (zstandard not installed)", lambda b: zlib.compress(b, 9)


def naive_split_row(model: nn.Module, head: nn.Module, tail: nn.Module, x: torch.Tensor, y: np.ndarray) -> dict:
    """The original model cut at the same layer: per-image min/max 8-bit features + two float32 scales, compressed."""
    name, compress = _compressor()
    with torch.no_grad():
        feats = head(x)
    lo = feats.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = feats.flatten(1).max(1).values.view(-1, 1, 1, 1)
    scale = (hi - lo).clamp_min(1e-12) / 255.0
    q = torch.round((feats - lo) / scale).to(torch.uint8)
    sizes = [len(compress(q[i].numpy().tobytes())) + 8 for i in range(len(q))]
    with torch.no_grad():
        top1 = top1_of(tail, q.float() * scale + lo, y)
    return {"codec": f"naive split 8-bit + {name}", "bytes_mean": float(np.mean(sizes)), "top1": top1}


def compare(split: dict, baselines: list[dict], tolerance: float = 0.5) -> dict:
    """The cheapest input codec at least as accurate as the split (less `tolerance` points), and the bytes ratio.

    The aim (2x fewer bytes at equal accuracy) is met only when that codec is also no more than `tolerance`
    points more accurate: a split that wins on bytes by losing accuracy has not met it.
    """
    inputs = [r for r in baselines if not r["codec"].startswith("naive")]
    matched = [r for r in inputs if r["top1"] >= split["top1"] - tolerance]
    best = min(matched, key=lambda r: r["bytes_mean"]) if matched else max(inputs, key=lambda r: r["top1"])
    ratio, gap = best["bytes_mean"] / split["bytes_mean"], best["top1"] - split["top1"]
    return {"best_input_codec": best["codec"], "codec_bytes": best["bytes_mean"], "codec_top1": best["top1"],
            "codec_matches_accuracy": bool(matched), "bytes_ratio": ratio, "accuracy_gap_points": gap,
            "aim_met": ratio >= 2.0 and gap <= tolerance, "tolerance_points": tolerance}
