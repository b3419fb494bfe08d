"""Are two models different on the same test images? A paired comparison.

Two models scored on the same images are not independent samples: most images are right (or
wrong) for both. Only the discordant images, right for one model and wrong for the other,
tell them apart, and the two tests here use exactly that pairing:

- the exact McNemar test (statsmodels ``mcnemar(exact=True)``: a two-sided binomial test of the
  discordant counts against 1:1), for a p-value;
- a paired bootstrap of the accuracy difference (test images drawn with replacement, both
  models' outcomes on the same drawn images), for an interval in accuracy points.
"""
from __future__ import annotations

import itertools

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar

from plankton_transfer.evaluation.intervals import central_interval, resample_indices


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value; 1.0 when the models never disagree."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    table = [[int((a & b).sum()), only_a], [only_b, int((~a & ~b).sum())]]
    return float(min(1.0, mcnemar(table, exact=True).pvalue))


def paired_difference(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, confidence: float,
                      n_resamples: int, seed: int) -> dict[str, float]:
    """Accuracy of A minus accuracy of B, its paired bootstrap interval, the discordant counts and
    the exact McNemar p-value."""
    y_true = np.asarray(y_true)
    correct_a, correct_b = np.asarray(pred_a) == y_true, np.asarray(pred_b) == y_true
    difference = float(correct_a.mean() - correct_b.mean()) if len(y_true) else 0.0
    diffs = [correct_a[idx].mean(axis=1) - correct_b[idx].mean(axis=1)
             for idx in resample_indices(len(y_true), n_resamples, seed)] if len(y_true) else [np.zeros(1)]
    low, high = central_interval(np.concatenate(diffs), confidence, difference)
    return {
        "difference": difference,
        "difference_lo": low,
        "difference_hi": high,
        "only_a_right": int((correct_a & ~correct_b).sum()),
        "only_b_right": int((~correct_a & correct_b).sum()),
        "images": int(len(y_true)),
        "mcnemar_p": mcnemar_exact(correct_a, correct_b),
    }


PAIR_COLUMNS = ["model_a", "model_b", "difference", "difference_lo", "difference_hi", "only_a_right",
                "only_b_right", "images", "mcnemar_p"]


def compare_pairs(y_true: np.ndarray, predictions: dict[str, np.ndarray], confidence: float, n_resamples: int,
                  seed: int) -> list[dict]:
    """Every pair of models, the more accurate first (ties: the order given)."""
    rows = []
    for a, b in itertools.combinations(predictions, 2):
        if (predictions[b] == y_true).sum() > (predictions[a] == y_true).sum():
            a, b = b, a
        rows.append({"model_a": a, "model_b": b,
                     **paired_difference(y_true, predictions[a], predictions[b], confidence, n_resamples, seed)})
    return rows


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def pair_sentence(row: dict, confidence: float) -> str:
    """One plain sentence, e.g. 'efficientnet_lite0 vs vgg11: +50.0 points [20.0, 80.0], McNemar
    p = 0.031 (5 of 10 test images right only for efficientnet_lite0, 0 only for vgg11).'"""
    a, b = row["model_a"], row["model_b"]
    verdict = "different" if row["mcnemar_p"] < 1 - confidence else "not distinguishable"
    return (f"{a} vs {b}: {100 * row['difference']:+.1f} points [{100 * row['difference_lo']:.1f}, "
            f"{100 * row['difference_hi']:.1f}], McNemar {format_p(row['mcnemar_p'])} "
            f"({row['only_a_right']} of {row['images']} test images right only for {a}, {row['only_b_right']} "
            f"only for {b}): {verdict} at the {100 * (1 - confidence):g} % level.")
