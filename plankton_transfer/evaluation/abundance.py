"""How many of each taxon? Counts from a classifier, raw and adjusted.

Ecologists want the composition of a sample more than per-image accuracy. Two estimators,
both on the test set:

- classify and count: the number of images predicted as each class;
- adjusted count (Forman 2008's "adjusted classify and count", the matrix form of Saerens et
  al. 2002): the predicted proportions q relate to the true ones p through the confusion rates
  M[i, j] = P(predicted i | true j) as q = M p. M is estimated on the validation set, p is
  solved by least squares, clipped to be non-negative and renormalised to sum to 1.

The error of each is the total absolute proportion error, half the sum of the absolute
differences between estimated and true class proportions (0: the composition is exact;
1: nothing in common).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def confusion_rates(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """M[i, j] = fraction of true-class-j images predicted as i; a class with no image here is
    taken as always recognised (its column is the unit vector), the only assumption possible."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (np.asarray(y_pred), np.asarray(y_true)), 1)
    totals = counts.sum(axis=0)
    rates = np.divide(counts, totals, out=np.eye(n_classes), where=totals > 0)
    return rates


def adjusted_proportions(predicted_proportions: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Solve ``rates @ p = predicted_proportions`` (least squares), clip to >= 0, renormalise."""
    solved = np.linalg.lstsq(rates, np.asarray(predicted_proportions, dtype=float), rcond=None)[0]
    solved = np.clip(solved, 0, None)
    total = solved.sum()
    return solved / total if total > 0 else np.asarray(predicted_proportions, dtype=float)


def proportion_error(estimated: np.ndarray, true: np.ndarray) -> float:
    """Half the sum of absolute differences between two sets of class proportions."""
    return float(0.5 * np.abs(np.asarray(estimated, float) - np.asarray(true, float)).sum())


def abundance_table(y_val: np.ndarray, pred_val: np.ndarray, y_test: np.ndarray, pred_test: np.ndarray,
                    classes: list[str]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per class: true, predicted and adjusted test counts; and the two estimators' errors."""
    n_classes, n = len(classes), len(y_test)
    true = np.bincount(y_test, minlength=n_classes).astype(float)
    predicted = np.bincount(pred_test, minlength=n_classes).astype(float)
    if n == 0:
        adjusted = predicted
    else:
        adjusted = n * adjusted_proportions(predicted / n, confusion_rates(y_val, pred_val, n_classes))
    table = pd.DataFrame({"class": classes, "true": true.astype(int), "predicted": predicted.astype(int),
                          "adjusted": adjusted.round(2)})
    scale = max(n, 1)
    errors = {"classify_count_error": proportion_error(predicted / scale, true / scale),
              "adjusted_count_error": proportion_error(adjusted / scale, true / scale)}
    return table, errors
