"""Per-class probability thresholds for a target precision, chosen on the validation set.

For each class, among the validation images the head predicts as that class, the threshold
is the lowest probability ``t`` such that those with probability >= ``t`` are correct at a
rate of at least ``thresholds.target_precision`` (scikit-learn's precision-recall curve).
A class for which no threshold reaches the target (or that the head never predicts on the
validation set) has none: prediction marks all its images ``needs_review``. The thresholds
use :func:`~plankton_transfer.models.heads.head_probabilities`, so they follow whatever
calibration the model file carries.

Small validation sets give rough thresholds: the model file stores, per class, how many
validation images each threshold rests on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

from plankton_transfer.data.features import load_split
from plankton_transfer.models.heads import head_probabilities


def precision_threshold(correct: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest score at which the images scoring at least that are correct at rate >= ``target``."""
    if not correct.any():
        return None
    precision, _, thresholds = precision_recall_curve(correct, scores)
    reached = np.flatnonzero(precision[:-1] >= target)  # precision[i] belongs to thresholds[i]
    return float(thresholds[reached[0]]) if len(reached) else None


def class_thresholds(y_true: np.ndarray, proba: np.ndarray, classes: list[str], target: float) -> dict:
    """The thresholds of every class and the number of validation images each rests on."""
    predicted = proba.argmax(axis=1)
    per_class, support = {}, {}
    for label, name in enumerate(classes):
        mask = predicted == label
        per_class[name] = precision_threshold(y_true[mask] == label, proba[mask, label], target)
        support[name] = int(mask.sum())
    return {"target_precision": target, "split": "val", "per_class": per_class, "val_predictions": support}


def validation_thresholds(record: dict, features: str | Path, target: float) -> dict:
    """Thresholds for a model record from its features folder's validation split."""
    x, y = load_split(features, "val")
    return class_thresholds(y, head_probabilities(record, x), record["classes"], target)


def review_flags(record: dict, predicted: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """True where an image's probability is under its predicted class's threshold (or the class
    has none, or the model file predates thresholds): a person should check it."""
    per_class = (record.get("thresholds") or {}).get("per_class", {})
    limits = np.array([np.inf if per_class.get(name) is None else per_class[name] for name in record["classes"]])
    return probability < limits[predicted]
