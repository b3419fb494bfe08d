"""What the evaluate stage adds to the point estimates: intervals, calibration and abundance.

One call per model, on the cached validation and test features (see the modules it uses:
intervals.py, calibration.py, abundance.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.data.features import load_split
from plankton_transfer.evaluation.abundance import abundance_table
from plankton_transfer.evaluation.calibration import (calibration_summary, reliability_rows, reliability_table,
                                                      scaled_probabilities)
from plankton_transfer.evaluation.intervals import metric_intervals
from plankton_transfer.models.heads import head_logits, head_temperature
from plankton_transfer.params import StatsParams


@dataclasses.dataclass
class Assessment:
    intervals: dict[str, dict[str, float]]  # split -> accuracy_lo, accuracy_hi, ...
    calibration: dict[str, float]  # temperature; val/test cross-entropy and test ECE before/after
    abundance: dict[str, float]  # classify_count_error, adjusted_count_error
    abundance_table: pd.DataFrame  # class, true, predicted, adjusted (test counts)
    reliability_rows: list[dict]  # DVC plot data (test split)
    reliability: dict[str, pd.DataFrame]  # "before"/"after": the test split's bins, for the figure


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in values.items()}


def assess(record: dict, features: Path, cfg: StatsParams, seed: int) -> Assessment:
    """Intervals for val and test, calibration before/after temperature scaling, test abundance."""
    n_classes, temperature = len(record["classes"]), head_temperature(record)
    logits, labels = {}, {}
    for split in ("val", "test"):
        x, labels[split] = load_split(features, split)
        logits[split] = head_logits(record, np.asarray(x))
    predicted = {split: logits[split].argmax(axis=1) for split in logits}
    intervals = {split: rounded(metric_intervals(labels[split], predicted[split], n_classes, cfg.confidence,
                                                 cfg.resamples, seed, cfg.interval_method)) for split in logits}
    val = calibration_summary(logits["val"], labels["val"], temperature, cfg.calibration_bins)
    test = calibration_summary(logits["test"], labels["test"], temperature, cfg.calibration_bins)
    calibration = {"temperature": temperature, "val_loss_before": val["loss_before"],
                   "val_loss_after": val["loss_after"], **{f"test_{k}": v for k, v in test.items()}}
    table, errors = abundance_table(labels["val"], predicted["val"], labels["test"], predicted["test"],
                                    list(record["classes"]))
    bins = {name: reliability_table(scaled_probabilities(logits["test"], t), labels["test"], cfg.calibration_bins)
            for name, t in (("before", 1.0), ("after", temperature))}
    return Assessment(intervals=intervals, calibration=rounded(calibration), abundance=rounded(errors),
                      abundance_table=table,
                      reliability_rows=reliability_rows(logits["test"], labels["test"], temperature,
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
