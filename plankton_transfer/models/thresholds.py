"""Per-class auto-accept thresholds, chosen on the validation split, only where the validation
images can support them.

For each class, among the validation images the head predicts as that class (sorted by
probability), the threshold is the lowest probability ``t`` such that the images at or above
``t`` are correct at a rate whose one-sided 95 % Wilson lower bound reaches
``thresholds.target_precision``. The lower bound, not the observed rate, is what must reach the
target: two of two images right is a precision of 1.0, but says little. With every image right,
that takes n >= z^2 * target / (1 - target) images (z = 1.645): 52 at a target of 0.95, 25 at
0.90, 11 at 0.80; more when some are wrong. A class without enough support gets no threshold
(``None``) and every one of its images is flagged for review; so does every image of a model
whose backbone is not pretrained (its probabilities carry no evidence worth trusting).
Thresholds use the calibrated probabilities, as prediction does.
"""
from __future__ import annotations

import numpy as np

from plankton_transfer.models.model_file import Thresholds

Z_ONE_SIDED_95 = 1.6448536269514722


def wilson_lower_bound(correct: np.ndarray, n: np.ndarray, z: float = Z_ONE_SIDED_95) -> np.ndarray:
    """One-sided Wilson score lower bound of ``correct / n`` (0 where n is 0)."""
    correct, n = np.asarray(correct, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        centre = p + z * z / (2 * n)
        spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        bound = (centre - spread) / (1 + z * z / n)
    return np.where(n > 0, bound, 0.0)


def supported_threshold(correct: np.ndarray, scores: np.ndarray, target: float) -> tuple[float | None, int, int]:
    """(threshold, images at or above it, correct among them): the lowest score whose images'
    precision has a lower bound >= ``target``; (None, 0, 0) when no score has that support."""
    order = np.argsort(-scores, kind="stable")
    hits, seen = np.cumsum(correct[order]), np.arange(1, len(order) + 1)
    # a cut only between different scores: images of equal probability are accepted together
    cut = np.r_[scores[order][1:] < scores[order][:-1], True] if len(order) else np.zeros(0, bool)
    ok = np.flatnonzero(cut & (wilson_lower_bound(hits, seen) >= target))
    if not len(ok):
        return None, 0, 0
    last = int(ok[-1])
    return float(scores[order][last]), int(seen[last]), int(hits[last])


def class_thresholds(y_true: np.ndarray, proba: np.ndarray, classes: list[str], target: float,
                     pretrained: bool = True) -> Thresholds:
    """The thresholds of every class on validation labels ``y_true`` and probabilities ``proba``."""
    predicted = proba.argmax(axis=1)
    per_class, accepted, correct, predicted_n = {}, {}, {}, {}
    for label, name in enumerate(classes):
        mask = predicted == label
        threshold, n, k = supported_threshold(y_true[mask] == label, proba[mask, label], target)
        if not pretrained:
            threshold, n, k = None, 0, 0
        per_class[name], accepted[name], correct[name] = threshold, n, k
        predicted_n[name] = int(mask.sum())
    rule = (f"one-sided 95 % Wilson lower bound of the precision of the validation images at or above the threshold "
            f">= {target:g}" + ("" if pretrained else "; backbone NOT pretrained: no thresholds, every image reviewed"))
    return Thresholds(target_precision=target, split="val", rule=rule, per_class=per_class, accepted_images=accepted,
                      correct_images=correct, predicted_images=predicted_n)


def review_flags(thresholds: Thresholds, classes: tuple[str, ...] | list[str], predicted: np.ndarray,
                 probability: np.ndarray) -> np.ndarray:
    """True where a person should check an image: its probability is under its predicted class's
    threshold, the class has none, or the probability is not a finite number."""
    limits = np.array([np.inf if thresholds.per_class.get(name) is None else thresholds.per_class[name]
                       for name in classes])
    probability = np.asarray(probability, dtype=float)
    return ~np.isfinite(probability) | ~(probability >= limits[predicted])
