"""Per-class auto-accept thresholds with enough support, the review trade-off and the model card."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from plankton_transfer.evaluation.model_card import model_card
from plankton_transfer.evaluation.summary import (CalibrationScores, Estimate, EvaluationSummary, ReviewScores,
                                                  SplitScores)
from plankton_transfer.evaluation.thresholds import class_threshold_point, coverage_table
from plankton_transfer.models.thresholds import class_thresholds, review_flags, supported_threshold, wilson_lower_bound
from tests.field_data import tiny_model


def brute_force_threshold(correct: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest score t whose images (score >= t) have a one-sided 95 % Wilson lower bound of
    precision >= target, by trying every score."""
    for t in sorted(set(scores.tolist())):
        kept = scores >= t
        low, _ = proportion_confint(int(correct[kept].sum()), int(kept.sum()), alpha=0.1, method="wilson")
        if low >= target - 1e-12:
            return t
    return None


@pytest.mark.parametrize("seed", range(6))
def test_the_threshold_is_the_lowest_probability_whose_precision_bound_reaches_the_target(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(0.2, 1.0, 400), 2)  # rounded: ties happen
    correct = rng.uniform(0, 1, 400) < scores ** 0.3  # higher scores are right more often
    for target in (0.6, 0.8, 0.9, 0.95):
        assert supported_threshold(correct, scores, target)[0] == brute_force_threshold(correct, scores, target)


def test_the_bound_is_statsmodels_wilson_and_needs_52_right_images_at_095():
    for k, n in ((52, 52), (40, 45), (3, 3), (0, 4)):
        assert wilson_lower_bound(np.array([k]), np.array([n]))[0] == pytest.approx(
            proportion_confint(k, n, alpha=0.1, method="wilson")[0])
    assert supported_threshold(np.ones(52, bool), np.linspace(1, 0.5, 52), 0.95)[0] == 0.5
    assert supported_threshold(np.ones(51, bool), np.linspace(1, 0.5, 51), 0.95)[0] is None  # 51 are not enough
    assert supported_threshold(np.ones(2, bool), np.array([0.2020, 0.2019]), 0.95)[0] is None  # T2: two images


def test_class_thresholds_need_support_and_a_model_that_is_not_pretrained_gets_none():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    proba = np.column_stack([np.where(y == 0, 0.97, 0.03), np.where(y == 1, 0.96, 0.04)])
    proba[:3] = [[0.55, 0.45]] * 3  # three unsure images of class 0, right
    found = class_thresholds(y, proba + rng.uniform(0, 1e-3, proba.shape), ["a", "b"], target=0.95)
    assert found.per_class["a"] is not None and found.per_class["b"] is not None
    assert found.predicted_images == {"a": 100, "b": 100} and found.correct_images["a"] == found.accepted_images["a"]
    few = class_thresholds(y[:10], proba[:10], ["a", "b"], target=0.95)
    assert few.per_class == {"a": None, "b": None}  # ten images cannot support 0.95
    untrained = class_thresholds(y, proba, ["a", "b"], target=0.95, pretrained=False)
    assert untrained.per_class == {"a": None, "b": None} and "NOT pretrained" in untrained.rule


def test_review_flags_every_image_of_a_class_without_threshold_and_a_nan_probability():
    model = tiny_model(("a", "b"), thresholds={"a": 0.7, "b": None})
    flags = review_flags(model.thresholds, model.classes, np.array([0, 0, 1, 0]), np.array([0.9, 0.6, 0.99, np.nan]))
    assert flags.tolist() == [False, True, True, True]


def test_the_coverage_table_trades_images_to_review_for_accuracy():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4) * 0.5, size=200)
    y = np.where(rng.uniform(size=200) < proba.max(axis=1), proba.argmax(axis=1), (proba.argmax(axis=1) + 1) % 4)
    table = coverage_table(y, proba)
    assert (table["accepted"] + table["to_review"] == 200).all()
    assert table["auto_accepted"].is_monotonic_decreasing and table["threshold"].is_monotonic_increasing
    row = table[table["threshold"] == 0.7].iloc[0]
    kept = proba.max(axis=1) >= 0.7
    assert row["accepted"] == kept.sum()
    assert row["accuracy"] == round((proba.argmax(axis=1) == y)[kept].mean(), 4)
    model = tiny_model(tuple("abcd"), thresholds={c: 0.7 for c in "abcd"})
    point = class_threshold_point(model, y, proba)  # the same threshold for every class = the global one
    assert point["accepted"] == row["accepted"] and round(point["accuracy"], 4) == row["accuracy"]


def summary_for(model, sha256: str) -> EvaluationSummary:
    metrics = {"accuracy": Estimate(0.9, 0.596, 0.982), "macro_f1": Estimate(0.85, 0.7, 0.93),
               "loss": Estimate(0.3579)}
    calibration = CalibrationScores(0.94, 0.36, 0.358, 0.197, 0.18, Estimate(0.146, 0.1, 0.3), Estimate(0.135, 0.09, 0.29),
                                    Estimate(-0.011, -0.05, 0.03), "not distinguishable")
    return EvaluationSummary(model=model.name, model_fingerprint=sha256, pretrained=False, weights="w", parameters=1,
                             epochs=30, best_epoch=12, lr=0.001, convergence_warning="",
                             splits={"val": SplitScores(10, metrics, "pooled"), "test": SplitScores(10, metrics, "pooled")},
                             interval_method="posterior", confidence=0.95, calibration=calibration, abundance={},
                             review=[ReviewScores("test", 6, 10, Estimate(1.0, 0.61, 1.0), [])])


def test_the_model_card_shows_data_metrics_with_intervals_thresholds_and_limits():
    model = tiny_model(("Copepoda", "Noctilucá"), thresholds={"Copepoda": 0.81, "Noctilucá": None})
    card = model_card(model, {"alexnet.onnx": "the network"}, summary_for(model, "ab" * 32),
                      per_class=pd.DataFrame({"class": ["Copepoda"], "precision": [1.0], "recall": [0.5], "f1": [0.67],
                                              "support": [2]}))
    assert "| Copepoda | 10 | 10 |" in card and "| **all** | 20 | 20 |" in card
    assert "| test (10 images) | accuracy (%) | 90.0 | 59.6 to 98.2 |" in card
    assert "| test (10 images) | macro-F1 (%) | 85.0 | 70.0 to 93.0 |" in card
    assert "| Noctilucá | none (always reviewed) |" in card and "6 of 10 images are accepted automatically" in card
    assert "not distinguishable" in card and "## Limits" in card and "`alexnet.onnx`" in card
    without = model_card(model, {}, None, "The evaluation belongs to another model file.")
    assert "belongs to another model file" in without and "| test (" not in without
