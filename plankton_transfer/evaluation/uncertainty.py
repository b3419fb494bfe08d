"""What the evaluate stage adds to the point estimates: intervals, calibration with its
uncertainty, abundance and the review trade-off, on the cached validation and test features
(see the modules it uses: intervals.py, calibration.py, abundance.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.data.features import load_split
from plankton_transfer.evaluation.abundance import (PerSampleAbundance, abundance_comparison, class_proportions,
                                                    per_sample_abundance)
from plankton_transfer.evaluation.calibration import (bootstrap_ece, calibration_summary, calibration_verdict,
                                                      reliability_rows, reliability_table, scaled_probabilities)
from plankton_transfer.evaluation.intervals import (central_interval, interval_method_for, metric_intervals_noted,
                                                    wilson_interval)
from plankton_transfer.evaluation.metrics import METRICS, score
from plankton_transfer.evaluation.summary import CalibrationScores, Estimate, ReviewScores, SplitScores
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.thresholds import review_flags
from plankton_transfer.params.stats import StatsParams

DIGITS = 4  # numbers in the summary: 4 decimals (timings aside)


@dataclasses.dataclass
class Assessment:
    labels: dict[str, np.ndarray]  # split -> true labels
    proba: dict[str, np.ndarray]  # split -> calibrated probabilities
    splits: dict[str, SplitScores]
    calibration: CalibrationScores
    abundance: dict  # per method <method>_error and _mae; adjusted_count_used and _reason
    abundance_table: pd.DataFrame  # class, true, then each method's test proportions
    per_sample: PerSampleAbundance | None  # when the test images' samples are known (two or more)
    review: list[ReviewScores]
    reliability_rows: list[dict]  # DVC plot data (test split)
    reliability: dict[str, pd.DataFrame]  # "before"/"after": the test split's bins, for the figure


def r(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def rounded(value):
    """Numbers to DIGITS decimals (NaN, for a method not used, as None: JSON has no NaN); others as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        return value
    return None if not np.isfinite(value) else r(value)


def split_scores(y: np.ndarray, proba: np.ndarray, n_classes: int, cfg: StatsParams, seed: int) -> SplitScores:
    """Every metric of one split, with the interval its definition asks for; the method used
    for balanced accuracy and macro-F1 (``stats.interval_method``, auto's choice named), and a
    note on any interval that does not contain its estimate (never widened to hide it)."""
    values = score(y, proba)
    bounds, notes = metric_intervals_noted(y, proba.argmax(axis=1), n_classes, cfg.confidence, cfg.resamples, seed,
                                           cfg.interval_method)
    metrics = {}
    for key, value in values.items():
        if METRICS[key].interval is None:
            metrics[key] = Estimate(r(value))
        else:
            note = "; ".join(n for n in notes if n.startswith(f"{key} ("))
            metrics[key] = Estimate(r(value), r(bounds[f"{key}_lo"]), r(bounds[f"{key}_hi"]), note)
    return SplitScores(images=len(y), metrics=metrics,
                       interval_method=interval_method_for(y, n_classes, cfg.interval_method))


def calibration_scores(model: ModelFile, logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                       cfg: StatsParams, seed: int) -> CalibrationScores:
    """Cross-entropy before/after temperature scaling, and the test ECE with bootstrap intervals
    and a verdict that follows them."""
    t, bins, y = model.temperature, cfg.calibration_bins, labels["test"]
    val = calibration_summary(logits["val"], labels["val"], t, bins)
    test = calibration_summary(logits["test"], y, t, bins)
    if len(y):
        before, after = bootstrap_ece(scaled_probabilities(logits["test"]), scaled_probabilities(logits["test"], t),
                                      y, bins, cfg.resamples, seed)
        intervals = [central_interval(v, cfg.confidence) for v in (before, after, after - before)]
    else:
        intervals = [(0.0, 1.0), (0.0, 1.0), (-1.0, 1.0)]
    change = test["ece_after"] - test["ece_before"]
    (b_lo, b_hi), (a_lo, a_hi), (c_lo, c_hi) = intervals
    return CalibrationScores(
        temperature=r(t), val_loss_before=r(val["loss_before"]), val_loss_after=r(val["loss_after"]),
        test_loss_before=r(test["loss_before"]), test_loss_after=r(test["loss_after"]),
        test_ece_before=Estimate(r(test["ece_before"]), r(b_lo), r(b_hi)),
        test_ece_after=Estimate(r(test["ece_after"]), r(a_lo), r(a_hi)),
        ece_change=Estimate(r(change), r(c_lo), r(c_hi)), verdict=calibration_verdict(c_lo, c_hi))


def review_scores(model: ModelFile, split: str, y: np.ndarray, proba: np.ndarray, confidence: float) -> ReviewScores:
    """How many images the per-class thresholds accept without review, and how precise they are."""
    predicted = proba.argmax(axis=1)
    accepted = ~review_flags(model.thresholds, model.classes, predicted, proba.max(axis=1) if len(proba) else proba)
    n, right = int(accepted.sum()), int((predicted == y)[accepted].sum())
    precision = None
    if n:
        low, high = wilson_interval(right, n, confidence)
        precision = Estimate(r(right / n), r(low), r(high))
    missing = [c for c in model.classes if model.thresholds.per_class.get(c) is None]
    return ReviewScores(split=split, accepted=n, images=len(y), precision=precision, classes_without_threshold=missing)


MIN_SAMPLES = 2  # test samples needed to judge abundance per sample


def sample_abundance(samples: np.ndarray | None, labels: dict, proba: dict, prior: np.ndarray, n_classes: int,
                     cfg: StatsParams, seed: int) -> PerSampleAbundance | None:
    """Every estimator's error per test sample, over the test images whose sample is known."""
    if samples is None:
        return None
    samples = np.asarray(samples, dtype=str)
    known = samples != ""
    if len(set(samples[known])) < MIN_SAMPLES:
        return None
    return per_sample_abundance(samples[known], labels["test"][known], proba["test"][known], labels["val"],
                                proba["val"].argmax(axis=1), n_classes, source_prior=prior, n_boot=cfg.resamples,
                                confidence=cfg.confidence, seed=seed)


def assess(model: ModelFile, features: Path, cfg: StatsParams, seed: int,
           test_samples: np.ndarray | None = None) -> Assessment:
    """Metrics with intervals for val and test, calibration, test abundance (per sample too where
    ``test_samples`` names each test image's sample), the review trade-off."""
    n_classes = len(model.classes)
    logits, labels, proba = {}, {}, {}
    for split in ("val", "test"):
        x, labels[split] = load_split(features, split)
        logits[split] = model.logits(np.asarray(x))
        proba[split] = model.probabilities(np.asarray(x))
    splits = {split: split_scores(labels[split], proba[split], n_classes, cfg, seed) for split in logits}
    train_prior = class_proportions(load_split(features, "train")[1], n_classes)  # the head's posteriors assume it
    table, abundance = abundance_comparison(labels["val"], proba["val"].argmax(axis=1), labels["test"], proba["test"],
                                            list(model.classes), source_prior=train_prior)
    per_sample = sample_abundance(test_samples, labels, proba, train_prior, n_classes, cfg, seed)
    if per_sample is not None:
        abundance["per_sample"] = [{k: rounded(v) for k, v in row.items()}
                                   for row in per_sample.summary.to_dict(orient="records")]
    bins = {name: reliability_table(scaled_probabilities(logits["test"], t), labels["test"], cfg.calibration_bins)
            for name, t in (("before", 1.0), ("after", model.temperature))}
    return Assessment(labels=labels, proba=proba, splits=splits,
                      calibration=calibration_scores(model, logits, labels, cfg, seed),
                      abundance={k: rounded(v) for k, v in abundance.items()}, abundance_table=table.round(DIGITS),
                      per_sample=per_sample,
                      review=[review_scores(model, s, labels[s], proba[s], cfg.confidence) for s in ("val", "test")],
                      reliability_rows=reliability_rows(logits["test"], labels["test"], model.temperature,
                                                        cfg.calibration_bins),
                      reliability=bins)


def predictions_table(paths: pd.Series, y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Every test image: true and predicted class, calibrated probability; what the compare stage
    pairs models on (the same images in the same order for every model)."""
    y_pred = proba.argmax(axis=1)
    return pd.DataFrame({
        "path": paths.to_numpy(),
        "true": [classes[i] for i in y_true],
        "predicted": [classes[i] for i in y_pred],
        "probability": proba[np.arange(len(y_pred)), y_pred].round(4),
        "correct": y_pred == y_true,
    })
