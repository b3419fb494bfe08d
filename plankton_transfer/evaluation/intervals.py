"""Intervals for the headline numbers: a test set of tens of images needs them.

- accuracy: the Wilson score interval (statsmodels ``proportion_confint``), which stays inside
  0..1 and keeps its coverage at n = 10, where the normal approximation does neither;
- balanced accuracy and macro-F1 (``stats.interval_method``): ``posterior`` (default), a seeded,
  stratified simulation, or ``bootstrap``, the seeded stratified bootstrap (each class's test
  images resampled with replacement within the class). ``posterior``: Each class's row of the
  confusion matrix (where that class's test images went) is drawn from its posterior given
  those images, a Dirichlet with a Jeffreys prior (half an image on "right", half an image
  spread over the wrong classes, so that the class's recall is Jeffreys' Beta(k + 1/2,
  n - k + 1/2)); every draw gives a balanced accuracy and a macro-F1, and the interval is the
  central part of those draws. Balanced accuracy is then exactly Brodersen et al. (2010)'s
  posterior ("The balanced accuracy and its posterior distribution", ICPR), extended to many
  classes.

  Why not a plain stratified bootstrap: resampling a class's own test images can only repeat
  the outcomes seen, so a class with one or two test images (the bundled sample's case, and
  common for rare taxa) contributes no uncertainty at all, and the bootstrap returned intervals
  of zero width such as 16.7 [16.7, 16.7]. The posterior agrees with the stratified bootstrap
  when every class has many test images and stays honest when one has few.

  As Brown, Cai and DasGupta (2001) do for the Jeffreys interval, an interval is widened to
  contain the observed value (a perfect score of 100 % gets an upper end of 100 %).

Each class is drawn on its own and the draws are chunked, so memory stays flat whatever the
number of classes; ``n_draws`` and the seed (``stats.resamples``, ``base.seed``) are recorded.
"""
from __future__ import annotations

import numpy as np
from statsmodels.stats.proportion import proportion_confint

CHUNK_CELLS = 4_000_000  # draws x classes x classes held at once (32 MB)
JEFFREYS = 0.5  # prior weight on a class's correct cell, and in total on its wrong cells


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n``; (0, 1) when there is nothing to count."""
    if n == 0:
        return 0.0, 1.0
    low, high = proportion_confint(int(correct), int(n), alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return counts


def posterior_rate_draws(counts: np.ndarray, n_draws: int, seed: int) -> np.ndarray:
    """(n_draws, C, C) draws of each present class's row of confusion rates; absent classes' rows are 0."""
    n_classes = len(counts)
    rng = np.random.default_rng(seed)
    prior = np.full((n_classes, n_classes), JEFFREYS / max(n_classes - 1, 1))
    np.fill_diagonal(prior, JEFFREYS)
    rates = np.zeros((n_draws, n_classes, n_classes))
    for c in np.flatnonzero(counts.sum(axis=1) > 0):
        rates[:, c, :] = rng.dirichlet(counts[c] + prior[c], size=n_draws)
    return rates


def balanced_accuracy_of(counts: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present (support > 0), for each matrix of a (b, C, C) stack of
    counts (or expected counts), as scikit-learn's ``balanced_accuracy_score``."""
    support = counts.sum(axis=2)
    recall = np.divide(np.diagonal(counts, axis1=1, axis2=2), support, out=np.zeros(support.shape),
                       where=support > 0)
    return recall.sum(axis=1) / np.maximum((support > 0).sum(axis=1), 1)


def macro_f1_of(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 over all C classes (0 for a class never true nor predicted), as scikit-learn's
    ``f1_score(labels=range(C), average="macro", zero_division=0)``."""
    tp = np.diagonal(counts, axis1=1, axis2=2).astype(float)
    denominator = counts.sum(axis=2) + counts.sum(axis=1)  # 2tp + fn + fp
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    return f1.mean(axis=1)


def central_interval(values: np.ndarray, confidence: float, observed: float | None = None) -> tuple[float, float]:
    """The central ``confidence`` part of ``values``, widened to contain ``observed``."""
    alpha = 1 - confidence
    low, high = (float(v) for v in np.quantile(values, [alpha / 2, 1 - alpha / 2]))
    if observed is not None:
        low, high = min(low, observed), max(high, observed)
    return low, high


def posterior_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_draws: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Balanced accuracy and macro-F1 of every posterior draw (expected counts: n_c x drawn rates)."""
    counts = confusion_counts(y_true, y_pred, n_classes)
    support = counts.sum(axis=1)
    chunk = max(1, CHUNK_CELLS // (n_classes * n_classes))
    balanced, f1 = [], []
    for i, start in enumerate(range(0, n_draws, chunk)):
        expected = posterior_rate_draws(counts, min(chunk, n_draws - start), seed + i) * support[None, :, None]
        balanced.append(balanced_accuracy_of(expected))
        f1.append(macro_f1_of(expected))
    return {"balanced_accuracy": np.concatenate(balanced), "macro_f1": np.concatenate(f1)}


def bootstrap_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_resamples: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Balanced accuracy and macro-F1 of every stratified bootstrap resample.

    Resampling a class's n_c test images with replacement draws its row of the confusion matrix
    from Multinomial(n_c, its observed row / n_c); drawing the rows directly is the same
    bootstrap without materialising index arrays.
    """
    counts = confusion_counts(y_true, y_pred, n_classes)
    support = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // (n_classes * n_classes))
    balanced, f1 = [], []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = np.zeros((size, n_classes, n_classes))
        for c in np.flatnonzero(support > 0):
            draws[:, c, :] = rng.multinomial(int(support[c]), counts[c] / support[c], size=size)
        balanced.append(balanced_accuracy_of(draws))
        f1.append(macro_f1_of(draws))
    return {"balanced_accuracy": np.concatenate(balanced), "macro_f1": np.concatenate(f1)}


def metric_intervals(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, confidence: float,
                     n_draws: int, seed: int, method: str = "posterior") -> dict[str, float]:
    """``accuracy_lo/hi`` (Wilson), ``balanced_accuracy_lo/hi`` and ``macro_f1_lo/hi`` (``method``:
    posterior draws, or the stratified bootstrap)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    low, high = wilson_interval(int((y_true == y_pred).sum()), len(y_true), confidence)
    out = {"accuracy_lo": low, "accuracy_hi": high}
    if len(y_true) == 0:
        return out | {"balanced_accuracy_lo": 0.0, "balanced_accuracy_hi": 1.0, "macro_f1_lo": 0.0, "macro_f1_hi": 1.0}
    observed_counts = confusion_counts(y_true, y_pred, n_classes)[None]
    observed = {"balanced_accuracy": float(balanced_accuracy_of(observed_counts)[0]),
                "macro_f1": float(macro_f1_of(observed_counts)[0])}
    simulate = bootstrap_metrics if method == "bootstrap" else posterior_metrics
    for name, values in simulate(y_true, y_pred, n_classes, n_draws, seed).items():
        out[f"{name}_lo"], out[f"{name}_hi"] = central_interval(values, confidence, observed[name])
    return out


def resample_indices(n: int, n_resamples: int, seed: int):
    """Chunks of plain bootstrap index rows (b, n): images drawn with replacement. Deterministic."""
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
