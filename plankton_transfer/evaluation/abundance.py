"""How many of each taxon? Counts from a classifier, raw and adjusted, and the baselines to beat.

Ecologists want the composition of a sample more than per-image accuracy. Estimators of the
class proportions of a set of test images (:data:`METHODS`):

- ``classify_count``: the fraction of images predicted as each class;
- ``adjusted_count`` (Forman 2008's "adjusted classify and count", the matrix form of Saerens et
  al. 2002): the predicted proportions q relate to the true ones p through the confusion rates
  M[i, j] = P(predicted i | true j) as q = M p. M is estimated on the validation set, p is
  solved by least squares, clipped to be non-negative and renormalised to sum to 1. Used only
  where the validation set can support it (:func:`adjustment_support`): at least
  ``min_val_per_class`` (10) validation images of every class the test predictions use, and a
  confusion matrix M whose condition number (2-norm) is at most ``max_condition`` (10), since
  errors in q and M are amplified up to that factor. Otherwise it is reported as not used, with
  the reason;
- ``probabilistic_count`` (Bella et al. 2010, "Quantification via probability estimators"):
  the mean of the calibrated (temperature-scaled) class probabilities;
- ``em`` (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a
  priori probabilities: a simple procedure", Neural Computation 14): the maximum-likelihood
  test prior, by expectation-maximisation on the calibrated probabilities, which are posteriors
  under the prior of the data the head learned from (``source_prior``: pass the training
  split's class proportions; by default the validation split's, smoothed by half an image per
  class so that no class starts at zero);
- baselines that use no test image: ``uniform`` (1/C for each of the C classes) and
  ``validation_prior`` (the class proportions of the validation split).

Errors: the total absolute proportion error, half the sum of the absolute differences between
estimated and true class proportions (0: the composition is exact; 1: nothing in common), and
the mean absolute error over the C classes (``prevalence_mae``: the same sum divided by C).
Per sample (an IFCB bin, an EcoTaxa sample_id: :func:`per_sample_abundance`), every method
estimates each sample's composition from that sample's images alone; its error is the MAE of
that sample, summarised as the mean over samples with a seeded bootstrap interval over samples.

Why no quantification library: QuaPy 0.2.3 and mlquantify 0.5.1 both install beside numpy
2.4.6, scikit-learn 1.9.1 and pandas 3.1.1, but neither earns its place here. The head is
trained by the pipeline, so only their aggregation step would be used, which for these
methods is the few lines below. QuaPy brings dataset-loading dependencies with it
(abstention, built from its source archive, ucimlrepo, xlrd, certifi). In mlquantify 0.5.1,
the multiclass ``ACC.aggregate`` on precomputed predictions raises AttributeError, and
``GACC.aggregate`` fails when a class has no validation image, which is common for rare taxa
here. The tests check these formulas against QuaPy's ``ACC.solve_adjustment`` and ``EMQ.EM``
where QuaPy is installed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from plankton_transfer.evaluation.intervals import central_interval

METHODS = ("classify_count", "adjusted_count", "probabilistic_count", "em", "uniform", "validation_prior")
MIN_VAL_PER_CLASS = 10  # validation images of each class the test predictions use, for adjusted_count
MAX_CONDITION = 10.0  # largest condition number of the confusion rates for adjusted_count


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


# ----------------------------------------------------------------------------------------------
# more estimators, the rule for adjusting, and per-sample errors


def prevalence_mae(estimated: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute difference between two sets of class proportions, over the classes."""
    return float(np.abs(np.asarray(estimated, float) - np.asarray(true, float)).mean())


def class_proportions(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Proportions of each class 0..n_classes-1 among ``labels`` (zeros when there are none)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    return counts / counts.sum() if counts.sum() > 0 else counts


def uniform_proportions(n_classes: int) -> np.ndarray:
    return np.full(n_classes, 1.0 / n_classes)


def probabilistic_proportions(proba: np.ndarray) -> np.ndarray:
    """Probabilistic classify and count: the mean of the (calibrated) class probabilities."""
    proba = np.asarray(proba, dtype=float)
    return proba.mean(axis=0) if len(proba) else np.zeros(proba.shape[1])


def em_proportions(proba: np.ndarray, source_prior: np.ndarray, tol: float = 1e-8,
                   max_iter: int = 10_000) -> tuple[np.ndarray, bool]:
    """Saerens et al. (2002): the test prior p maximising the likelihood of ``proba`` (N, C),
    posteriors under ``source_prior``. E-step: each row reweighted by p / source_prior and
    renormalised; M-step: p = the mean of those rows; from p = source_prior until no entry moves
    by more than ``tol``. Returns (p, converged). A source prior with a zero entry gets 1e-6
    added to every entry (then renormalised), as it divides."""
    proba = np.asarray(proba, dtype=float)
    source = np.asarray(source_prior, dtype=float)
    if (source <= 0).any():
        source = source + 1e-6
    source = source / source.sum()
    if len(proba) == 0:
        return source.copy(), True
    prior = source.copy()
    for _ in range(max_iter):
        weighted = proba * (prior / source)
        weighted /= np.maximum(weighted.sum(axis=1, keepdims=True), np.finfo(float).tiny)
        updated = weighted.mean(axis=0)
        if np.abs(updated - prior).max() < tol:
            return updated, True
        prior = updated
    return prior, False


@dataclasses.dataclass(frozen=True)
class AdjustmentSupport:
    """Whether the validation set supports the adjusted count (see the module docstring)."""
    used: bool
    reason: str  # why not; "" when used
    condition_number: float  # of the confusion rates M (inf when singular)
    thin_classes: dict[int, int]  # class -> validation images, for classes the test predictions use with too few


def adjustment_support(y_val: np.ndarray, pred_val: np.ndarray, pred_test: np.ndarray, n_classes: int,
                       min_val_per_class: int = MIN_VAL_PER_CLASS,
                       max_condition: float = MAX_CONDITION) -> AdjustmentSupport:
    """The adjusted count is used when every class that ``pred_test`` uses has at least
    ``min_val_per_class`` validation images and the confusion rates have a condition number of at
    most ``max_condition``."""
    val_counts = np.bincount(np.asarray(y_val, dtype=int), minlength=n_classes)
    used_classes = np.unique(np.asarray(pred_test, dtype=int))
    thin = {int(c): int(val_counts[c]) for c in used_classes if val_counts[c] < min_val_per_class}
    rates = confusion_rates(y_val, pred_val, n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        condition = float(np.linalg.cond(rates))
    if not np.isfinite(condition):
        condition = float("inf")
    reasons = []
    if thin:
        listed = ", ".join(f"class {c}: {n}" for c, n in sorted(thin.items()))
        reasons.append(f"fewer than {min_val_per_class} validation images of {len(thin)} class(es) the test "
                       f"predictions use ({listed})")
    if not condition <= max_condition:
        reasons.append(f"the validation confusion rates are ill-conditioned (condition number {condition:.3g} > "
                       f"{max_condition:g})")
    return AdjustmentSupport(used=not reasons, reason="; ".join(reasons), condition_number=condition,
                             thin_classes=thin)


def default_source_prior(y_val: np.ndarray, n_classes: int) -> np.ndarray:
    """The validation class proportions smoothed by half an image per class."""
    counts = np.bincount(np.asarray(y_val, dtype=int), minlength=n_classes) + 0.5
    return counts / counts.sum()


def abundance_estimates(y_val: np.ndarray, pred_val: np.ndarray, pred_test: np.ndarray, proba_test: np.ndarray,
                        n_classes: int, *, source_prior: np.ndarray | None = None,
                        support: AdjustmentSupport | None = None, min_val_per_class: int = MIN_VAL_PER_CLASS,
                        max_condition: float = MAX_CONDITION) -> tuple[dict[str, np.ndarray | None], AdjustmentSupport]:
    """Every method's class proportions of the images ``pred_test``/``proba_test`` (calibrated
    probabilities, (N, C)); ``adjusted_count`` is None where ``support`` (by default
    :func:`adjustment_support` of these predictions) says it is not used."""
    pred_test = np.asarray(pred_test, dtype=int)
    if support is None:
        support = adjustment_support(y_val, pred_val, pred_test, n_classes, min_val_per_class, max_condition)
    source = default_source_prior(y_val, n_classes) if source_prior is None else np.asarray(source_prior, float)
    counted = class_proportions(pred_test, n_classes)
    adjusted = None
    if support.used and len(pred_test):
        adjusted = adjusted_proportions(counted, confusion_rates(y_val, pred_val, n_classes))
    return {"classify_count": counted, "adjusted_count": adjusted,
            "probabilistic_count": probabilistic_proportions(proba_test),
            "em": em_proportions(proba_test, source)[0],
            "uniform": uniform_proportions(n_classes),
            "validation_prior": class_proportions(y_val, n_classes)}, support


def abundance_comparison(y_val: np.ndarray, pred_val: np.ndarray, y_test: np.ndarray, proba_test: np.ndarray,
                         classes: list[str], *, source_prior: np.ndarray | None = None,
                         min_val_per_class: int = MIN_VAL_PER_CLASS,
                         max_condition: float = MAX_CONDITION) -> tuple[pd.DataFrame, dict]:
    """The whole test split: per class, the true proportion and every method's estimate (NaN for
    an adjusted count not used); and per method ``<method>_error`` (total absolute proportion
    error) and ``<method>_mae``, with ``adjusted_count_used`` and ``adjusted_count_reason``."""
    n_classes = len(classes)
    proba_test = np.asarray(proba_test, dtype=float)
    pred_test = proba_test.argmax(axis=1)
    estimates, support = abundance_estimates(y_val, pred_val, pred_test, proba_test, n_classes,
                                             source_prior=source_prior, min_val_per_class=min_val_per_class,
                                             max_condition=max_condition)
    true = class_proportions(y_test, n_classes)
    table = pd.DataFrame({"class": classes, "true": true})
    summary: dict = {}
    for method in METHODS:
        estimate = estimates[method]
        table[method] = np.full(n_classes, np.nan) if estimate is None else estimate
        summary[f"{method}_error"] = float("nan") if estimate is None else proportion_error(estimate, true)
        summary[f"{method}_mae"] = float("nan") if estimate is None else prevalence_mae(estimate, true)
    summary["adjusted_count_used"] = support.used
    summary["adjusted_count_reason"] = support.reason
    summary["adjusted_count_condition_number"] = support.condition_number
    return table, summary


@dataclasses.dataclass
class PerSampleAbundance:
    per_sample: pd.DataFrame  # sample, images, then one MAE column per method (NaN: not used)
    summary: pd.DataFrame  # method, samples, mean_mae, mean_mae_lo, mean_mae_hi, used, reason
    support: AdjustmentSupport


def per_sample_abundance(sample_ids: np.ndarray, y_test: np.ndarray, proba_test: np.ndarray, y_val: np.ndarray,
                         pred_val: np.ndarray, n_classes: int, *, source_prior: np.ndarray | None = None,
                         min_val_per_class: int = MIN_VAL_PER_CLASS, max_condition: float = MAX_CONDITION,
                         n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> PerSampleAbundance:
    """Each sample's composition estimated by every method from its own test images alone (the
    adjusted count with the validation confusion rates, used for all samples or none, by the rule
    applied to the predictions of all test images), its error the MAE over the ``n_classes``
    classes; per method, the mean over samples with a seeded percentile bootstrap interval
    (samples resampled with replacement; widened to contain the observed mean)."""
    sample_ids = np.asarray(sample_ids)
    y_test = np.asarray(y_test, dtype=int)
    proba_test = np.asarray(proba_test, dtype=float)
    if not (len(sample_ids) == len(y_test) == len(proba_test)):
        raise ValueError("sample_ids, y_test and proba_test need one entry per test image")
    pred_test = proba_test.argmax(axis=1) if len(proba_test) else np.zeros(0, int)
    support = adjustment_support(y_val, pred_val, pred_test, n_classes, min_val_per_class, max_condition)
    samples, which = np.unique(sample_ids, return_inverse=True)
    rows = []
    for i, sample in enumerate(samples):
        mine = which == i
        estimates, _ = abundance_estimates(y_val, pred_val, pred_test[mine], proba_test[mine], n_classes,
                                           source_prior=source_prior, support=support)
        true = class_proportions(y_test[mine], n_classes)
        rows.append({"sample": sample, "images": int(mine.sum()),
                     **{m: (float("nan") if e is None else prevalence_mae(e, true)) for m, e in estimates.items()}})
    per_sample = pd.DataFrame(rows, columns=["sample", "images", *METHODS])

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(samples), size=(n_boot, len(samples))) if len(samples) else None
    summary = []
    for method in METHODS:
        errors = per_sample[method].to_numpy(dtype=float)
        used = method != "adjusted_count" or support.used
        row = {"method": method, "samples": len(samples), "mean_mae": float("nan"), "mean_mae_lo": float("nan"),
               "mean_mae_hi": float("nan"), "used": used, "reason": "" if used else support.reason}
        if used and len(samples):
            row["mean_mae"] = float(errors.mean())
            row["mean_mae_lo"], row["mean_mae_hi"] = central_interval(errors[draws].mean(axis=1), confidence,
                                                                      row["mean_mae"])
        summary.append(row)
    return PerSampleAbundance(per_sample=per_sample, summary=pd.DataFrame(summary), support=support)


COUNT_METHODS = ("classify_count", "probabilistic_count", "em")  # what predict can estimate per sample


def sample_counts(samples: list[str], proba: np.ndarray, known: np.ndarray, classes: list[str],
                  source_prior: np.ndarray) -> pd.DataFrame:
    """Images of each class in each sample of new images, by the methods that need no labelled
    data beyond the model (COUNT_METHODS; the adjusted count needs validation confusion rates,
    which a model file does not hold). ``proba`` (N, C): calibrated probabilities of the
    classified images, ``samples`` their sample names, ``known`` False for an image flagged
    unknown: those are counted in a row of their own (class ``unknown``) and left out of the
    estimates. ``source_prior``: the class proportions the head was trained under (EM)."""
    proba = np.asarray(proba, dtype=float)
    samples, known = np.asarray(samples, dtype=object), np.asarray(known, dtype=bool)
    rows = []
    for sample in sorted(set(samples.tolist())):
        mine = samples == sample
        p = proba[mine & known]
        n = len(p)
        estimates = {"classify_count": class_proportions(p.argmax(axis=1), len(classes)) if n else np.zeros(len(classes)),
                     "probabilistic_count": probabilistic_proportions(p) if n else np.zeros(len(classes)),
                     "em": em_proportions(p, source_prior)[0] if n else np.zeros(len(classes))}
        for c, name in enumerate(classes):
            rows.append({"sample": sample, "class": name, "images": int(mine.sum()),
                         **{m: round(float(n * estimates[m][c]), 2) for m in COUNT_METHODS}})
        flagged = int((mine & ~known).sum())
        rows.append({"sample": sample, "class": "unknown", "images": int(mine.sum()),
                     **{m: float(flagged) for m in COUNT_METHODS}})
    return pd.DataFrame(rows, columns=["sample", "class", "images", *COUNT_METHODS])
