"""Confidence cascades: a small model answers the inputs it is sure of, a big one the rest.

Among all thresholds whose cascade accuracy stays within `max_drop` points of the big model, the one with
the lowest mean latency, where latency per input is the small model's measured time plus the big model's
measured time for the inputs sent on. The threshold is chosen on a selection part of the validation images
and scored on the rest (`holdout`): a choice scored on the images it was chosen on sits at the edge of the
allowed drop by construction, and on 1000 images that edge moves by a point between halves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from slimkit.errors import BadInputError

__all__ = ["confidence", "CascadeConfig", "ThresholdChoice", "choose_threshold", "holdout_split", "score_threshold",
           "threshold_curve", "CONFIDENCE_KINDS", "MIN_IMAGES_PER_SIDE"]

CONFIDENCE_KINDS = ("max_softmax", "margin")
MIN_IMAGES_PER_SIDE = 10  # below this a threshold (or its score) rests on a handful of images


@dataclass
class CascadeConfig:
    """How the threshold is chosen: confidence kind, allowed drop below BIG, held-out fraction and its seed."""

    kind: str = "max_softmax"
    max_drop: float = 0.5  # points of top-1 below BIG alone
    holdout: float = 0.5  # fraction of the validation images kept out of the choice and scored after it
    seed: int = 0  # the random split of the validation images into selection and held-out parts

    def __post_init__(self) -> None:
        if self.kind not in CONFIDENCE_KINDS:
            raise BadInputError(f"--confidence {self.kind!r}: choose one of {', '.join(CONFIDENCE_KINDS)}")
        if self.max_drop < 0:
            raise BadInputError(f"--max-drop must be >= 0, got {self.max_drop}")
        if not 0 < self.holdout < 1:
            raise BadInputError(f"--holdout must be strictly between 0 and 1, got {self.holdout}")

    def to_dict(self) -> dict:
        return asdict(self)


def holdout_split(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(selection, held-out) sorted index arrays: a seeded random `fraction` of range(n) is held out."""
    held_n = int(round(n * fraction))
    if min(held_n, n - held_n) < MIN_IMAGES_PER_SIDE:
        raise BadInputError(f"--holdout {fraction} of {n} images leaves {n - held_n} to choose the threshold and "
                            f"{held_n} to score it; each needs >= {MIN_IMAGES_PER_SIDE} (more --val-samples)")
    # a random split, not the first/last part: validation files are often ordered by class or source
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held_n:]), np.sort(order[:held_n])


def confidence(logits: np.ndarray, kind: str = "max_softmax") -> np.ndarray:
    """Per-row confidence: the top softmax probability, or the gap between the top two probabilities."""
    if kind not in CONFIDENCE_KINDS:
        raise BadInputError(f"confidence {kind!r}: choose one of {', '.join(CONFIDENCE_KINDS)}")
    # it runs on every cascaded input, so no full softmax and no sort: the top class's exp(z - max) is
    # exactly 1, so its probability is 1 / sum, and only the second largest is needed for the margin
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    total = e.sum(axis=1)
    top = 1.0 / total
    if kind == "max_softmax" or e.shape[1] < 2:
        return top
    return top - np.partition(e, -2, axis=1)[:, -2] / total


@dataclass
class ThresholdChoice:
    threshold: float  # inputs with confidence >= threshold stay with the small model
    accuracy: float  # percent
    fraction_sent: float
    mean_latency_ms: float  # predicted from the per-model measured latencies
    big_accuracy: float
    small_accuracy: float
    curve: list[dict] = field(default_factory=list)  # every candidate threshold

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_curve(conf: np.ndarray, small_ok: np.ndarray, big_ok: np.ndarray, t_small: float, t_big: float) -> list[dict]:
    """Accuracy and mean latency at every distinct threshold, from keeping all to sending all on."""
    order = np.argsort(-conf, kind="stable")
    c, s, b = conf[order], small_ok[order].astype(float), big_ok[order].astype(float)
    n = len(c)
    # keeping the k most confident: small's hits among them + big's hits among the rest
    kept_small = np.concatenate([[0.0], np.cumsum(s)])
    sent_big = np.concatenate([[0.0], np.cumsum(b[::-1])])[::-1]
    rows = [{"threshold": float("inf"), "kept": 0}]
    rows += [{"threshold": float(c[k - 1]), "kept": k} for k in range(1, n + 1) if k == n or c[k] < c[k - 1]]
    for r in rows:
        k = r["kept"]
        r["accuracy"] = 100.0 * (kept_small[k] + sent_big[k]) / n
        r["fraction_sent"] = (n - k) / n
        r["mean_latency_ms"] = t_small + r["fraction_sent"] * t_big
    return rows


def score_threshold(threshold: float, conf: np.ndarray, small_ok: np.ndarray, big_ok: np.ndarray, small_ms: float,
                    big_ms: float) -> dict:
    """Accuracy (percent), fraction sent and predicted mean latency of a fixed threshold on these images."""
    keep = np.asarray(conf) >= threshold
    sent = 1.0 - float(keep.mean())
    accuracy = 100.0 * float(np.where(keep, small_ok, big_ok).mean())
    big_acc = 100.0 * float(np.mean(big_ok))
    return {"images": len(keep), "accuracy": accuracy, "fraction_sent": sent, "mean_latency_ms": small_ms + sent * big_ms,
            "big_accuracy": big_acc, "small_accuracy": 100.0 * float(np.mean(small_ok)), "drop": big_acc - accuracy}


def choose_threshold(conf: np.ndarray, small_ok: np.ndarray, big_ok: np.ndarray, small_ms: float, big_ms: float,
                     max_drop: float = 0.5) -> ThresholdChoice:
    """The threshold with the lowest mean latency whose accuracy is within `max_drop` points of the big model."""
    if not (len(conf) == len(small_ok) == len(big_ok)) or len(conf) == 0:
        raise BadInputError("confidences and correctness flags must be non-empty and of equal length")
    rows = threshold_curve(np.asarray(conf, float), np.asarray(small_ok, bool), np.asarray(big_ok, bool), small_ms, big_ms)
    big_acc = 100.0 * float(np.mean(big_ok))
    ok = [r for r in rows if r["accuracy"] >= big_acc - max_drop - 1e-9]
    # sending everything on always qualifies, so `ok` is never empty
    best = min(ok, key=lambda r: (r["mean_latency_ms"], -r["accuracy"]))
    return ThresholdChoice(best["threshold"], best["accuracy"], best["fraction_sent"], best["mean_latency_ms"],
                           big_acc, 100.0 * float(np.mean(small_ok)), rows)
