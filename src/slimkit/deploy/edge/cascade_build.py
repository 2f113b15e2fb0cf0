"""Build, measure and load a confidence cascade directory: small.onnx, big.onnx, policy.json, report.

The threshold is chosen on a seeded random part of the validation images and every reported accuracy,
share sent and measured latency of the cascade is also given on the held-out rest.

Both models are exported through slimkit.deploy.onnx_export (parity-checked) and everything after runs
in ONNX Runtime, so the latencies that choose the threshold are those of the deployed files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.nn as nn

from slimkit.deploy.edge.cascade import (CascadeConfig, ThresholdChoice, choose_threshold, confidence,
                                        holdout_split, score_threshold, threshold_curve)
from slimkit.errors import BadInputError

__all__ = ["CascadeRunner", "build_cascade"]

POLICY_VERSION = 1


class CascadeRunner:
    """Run a saved cascade directory: the small model on every input, the big one on the unsure ones."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from slimkit.deploy.onnx_export import ort_session

        path = Path(path)
        self.policy = json.loads((path / "policy.json").read_text())
        self.small = ort_session(path / self.policy["small"], threads)
        self.big = ort_session(path / self.policy["big"], threads)
        threshold = self.policy["threshold"]  # None: no confidence is enough, everything goes on
        self._threshold = np.inf if threshold is None else threshold
        self._names = {id(s): s.get_inputs()[0].name for s in (self.small, self.big)}  # looked up once, not per call

    def _logits(self, session, x: np.ndarray) -> np.ndarray:
        return session.run(None, {self._names[id(session)]: x.astype(np.float32, copy=False)})[0]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted classes, mask of inputs that went to the big model) for a batch `x`."""
        logits = self._logits(self.small, x)
        sent = confidence(logits, self.policy["confidence"]) < self._threshold
        if sent.any():
            logits[sent] = self._logits(self.big, x[sent])
        return logits.argmax(1), sent


def _all_logits(session, x: np.ndarray, batch: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i: i + batch]})[0] for i in range(0, len(x), batch)])


def _per_model_ms(small, big, x1: np.ndarray, repetitions: int) -> dict:
    from slimkit.profile.timing import measure_interleaved

    feeds = {"small": (small, {small.get_inputs()[0].name: x1}), "big": (big, {big.get_inputs()[0].name: x1})}
    timings = measure_interleaved({k: (lambda s=s, f=f: s.run(None, f)) for k, (s, f) in feeds.items()},
                                  repetitions=repetitions, rounds=5)
    return {k: t.to_dict() for k, t in timings.items()}


def _measured_cascade(runner: CascadeRunner, x: np.ndarray, count: int) -> dict:
    """Per-image latency of the cascade and of the big model alone, alternating image by image."""
    import time

    cascade, alone = [], []
    for i in range(min(count, len(x))):
        one = x[i: i + 1]
        start = time.perf_counter()
        runner.predict(one)
        cascade.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        runner._logits(runner.big, one)
        alone.append((time.perf_counter() - start) * 1e3)
    stats = lambda v: {"mean": float(np.mean(v)), "p90": float(np.percentile(v, 90)), "n": len(v)}  # noqa: E731
    return {"cascade_ms": stats(cascade), "big_alone_ms": stats(alone)}


def _check_classes(small_logits: np.ndarray, big_logits: np.ndarray, classes: int) -> None:
    if small_logits.shape[1] != big_logits.shape[1]:
        raise BadInputError(f"SMALL has {small_logits.shape[1]} classes but BIG has {big_logits.shape[1]}")
    if small_logits.shape[1] != classes:
        raise BadInputError(f"the models have {small_logits.shape[1]} classes but the data has {classes}")


def _choose_and_score(s_logits: np.ndarray, b_logits: np.ndarray, y: np.ndarray, per_model: dict,
                      config: CascadeConfig) -> tuple[ThresholdChoice, dict, np.ndarray]:
    """The threshold chosen on the selection part, its figures on the held-out part, and the held-out indices."""
    select, held = holdout_split(len(y), config.holdout, config.seed)
    conf, small_ok, big_ok = confidence(s_logits, config.kind), s_logits.argmax(1) == y, b_logits.argmax(1) == y
    t_small, t_big = per_model["small"]["median"], per_model["big"]["median"]
    choice = choose_threshold(conf[select], small_ok[select], big_ok[select], t_small, t_big, config.max_drop)
    heldout = score_threshold(choice.threshold, conf[held], small_ok[held], big_ok[held], t_small, t_big)
    heldout["curve"] = threshold_curve(conf[held], small_ok[held], big_ok[held], t_small, t_big)
    return choice, heldout, held


def _finite(curve: list[dict]) -> None:
    for row in curve:  # JSON has no infinity
        row["threshold"] = None if np.isinf(row["threshold"]) else row["threshold"]


def build_cascade(small: nn.Module, big: nn.Module, input_size, x: np.ndarray, y: np.ndarray, classes: int,
                  out: Path, config: CascadeConfig | None = None, *, threads: int = 1, repetitions: int = 100,
                  timed_images: int = 300) -> dict:
    """Export both models into `out`, choose the threshold on part of (x, y) and score it on the rest, measure,
    write policy.json; models unchanged."""
    from slimkit.deploy.onnx_export import export_onnx, ort_session

    config = config or CascadeConfig()
    holdout_split(len(y), config.holdout, config.seed)  # fail on too few images before exporting anything
    exports = {name: export_onnx(m, input_size, out / f"{name}.onnx").to_dict() for name, m in
               (("small", small), ("big", big))}
    s_sess, b_sess = ort_session(out / "small.onnx", threads), ort_session(out / "big.onnx", threads)
    s_logits, b_logits = _all_logits(s_sess, x), _all_logits(b_sess, x)
    _check_classes(s_logits, b_logits, classes)
    per_model = _per_model_ms(s_sess, b_sess, x[:1], repetitions)
    choice, heldout, held = _choose_and_score(s_logits, b_logits, y, per_model, config)
    policy = {"version": POLICY_VERSION, "small": "small.onnx", "big": "big.onnx", "confidence": config.kind,
              "threshold": None if np.isinf(choice.threshold) else choice.threshold, "input_size": list(input_size),
              "classes": classes}
    (out / "policy.json").write_text(json.dumps(policy, indent=2) + "\n")
    # timed on held-out images: their share sent on is the one the held-out figures report
    measured = _measured_cascade(CascadeRunner(out, threads), x[held], timed_images)
    _finite(choice.curve)
    _finite(heldout["curve"])
    return {"policy": policy, "config": config.to_dict(), "choice": choice.to_dict(), "heldout": heldout,
            "per_model_ms": per_model, "measured": measured, "exports": exports, "threads": threads,
            "images": len(y), "selection_images": len(y) - len(held)}
