"""Per-class thresholds for a target precision, the auto-accept table and the model card."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plankton_transfer.evaluation.model_card import model_card
from plankton_transfer.evaluation.thresholds import class_threshold_point, coverage_table
from plankton_transfer.models.thresholds import class_thresholds, precision_threshold


def brute_force_threshold(correct: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest score t with precision(score >= t) >= target, by trying every score."""
    for t in sorted(set(scores.tolist())):
        kept = scores >= t
        if correct[kept].mean() >= target:
            return t
    return None


@pytest.mark.parametrize("seed", range(6))
def test_the_threshold_is_the_lowest_probability_reaching_the_target_precision(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(0.2, 1.0, 40), 2)  # rounded: ties happen
    correct = rng.uniform(0, 1, 40) < scores  # higher scores are right more often
    for target in (0.6, 0.8, 0.95, 1.0):
        assert precision_threshold(correct, scores, target) == brute_force_threshold(correct, scores, target)
    assert precision_threshold(np.zeros(3, bool), np.array([0.5, 0.6, 0.9]), 0.5) is None


def test_class_thresholds_look_only_at_images_predicted_as_the_class():
    proba = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    y = np.array([0, 0, 1, 1, 0])
    found = class_thresholds(y, proba, ["a", "b"], target=0.95)
    assert found["per_class"] == {"a": 0.7, "b": 0.8}  # a: 0.6 is wrong; b: 0.55 is wrong
    assert found["val_predictions"] == {"a": 3, "b": 2}
    assert class_thresholds(y, proba, ["a", "b"], target=0.5)["per_class"]["a"] == 0.6  # 2 of 3 right


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
    record = {"classes": list("abcd"), "thresholds": {"per_class": {"a": 0.7, "b": 0.7, "c": 0.7, "d": 0.7}}}
    point = class_threshold_point(record, y, proba)  # the same threshold for every class = the global one
    assert point["accepted"] == row["accepted"] and round(point["accuracy"], 4) == row["accuracy"]


def test_the_model_card_shows_data_metrics_with_intervals_thresholds_and_limits():
    record = {"backbone": "alexnet", "classes": ["Copepoda", "Noctilucá"], "feature_dim": 4096,
              "weights": {"description": "ImageNet (project folder)", "pretrained": True, "file": "alexnet.pth",
                          "sha256": "ab" * 32, "check": "full sha256 pinned in the registry"},
              "training": {"lr": 0.001, "epochs": 30, "best_epoch": 12, "seed": 42},
              "preprocess": {"mode": "pad", "input_size": 224},
              "thresholds": {"target_precision": 0.95, "per_class": {"Copepoda": 0.81, "Noctilucá": None},
                             "val_predictions": {"Copepoda": 7, "Noctilucá": 0}}}
    metrics = {"test": {"accuracy": 0.9, "accuracy_ci": [0.8, 0.96], "macro_f1": {"value": 0.85, "low": 0.7,
                                                                                   "high": 0.93}}}
    counts = pd.DataFrame({"train": [8, 4], "val": [1, 1], "test": [1, 1]}, index=record["classes"])
    coverage = pd.DataFrame({"threshold": [0.0, 0.5], "auto_accepted": [1.0, 0.6], "accepted": [10, 6],
                             "to_review": [0, 4], "accuracy": [0.9, 1.0]})
    card = model_card(record, metrics, counts, {"source": "data/raw", "layout": "EcoTaxa export"}, coverage,
                      {"alexnet.onnx": "the network"})
    assert "| Copepoda | 8 | 1 | 1 | 10 |" in card and "| **all** | 12 | 2 | 2 | 16 |" in card
    assert "| test | accuracy | 0.9000 | 0.8000 to 0.9600 |" in card
    assert "| test | macro_f1 | 0.8500 | 0.7000 to 0.9300 |" in card
    assert "| Noctilucá | none | 0 |" in card and "global threshold of 0.5 accepts 60%" in card
    assert "sha256 `" + "ab" * 32 in card and "## Limits" in card and "`alexnet.onnx`" in card
