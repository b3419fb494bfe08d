"""Metric values on inputs small enough to check by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plankton_transfer.evaluation.scoring import misclassified
from plankton_transfer.evaluation.metrics import confusion, per_class_table, score

Y = np.array([0, 1, 2, 2])
P = np.array([
    [0.7, 0.2, 0.1],  # right
    [0.5, 0.4, 0.1],  # wrong: predicts 0, true class second
    [0.1, 0.1, 0.8],  # right
    [0.1, 0.6, 0.3],  # wrong: predicts 1, true class second
])


def test_every_metric_by_hand():
    m = score(Y, P)
    assert m["accuracy"] == 0.5
    assert math.isclose(m["loss"], -np.mean(np.log([0.7, 0.4, 0.8, 0.3])), rel_tol=1e-9)
    assert m["top5"] == 1.0  # 3 classes: top-2, and every true class is in its row's top two
    # per class recall: 1, 0, 0.5 -> balanced 0.5; F1: class0 2/3, class1 0, class2 2/3
    assert math.isclose(m["balanced_accuracy"], 0.5)
    assert math.isclose(m["macro_f1"], (2 / 3 + 0 + 2 / 3) / 3)


def test_per_class_table_and_confusion():
    table = per_class_table(Y, P.argmax(1), ["a", "b", "c"])
    assert table["support"].tolist() == [1, 1, 2]
    assert table["recall"].tolist() == [1.0, 0.0, 0.5]
    cm = confusion(Y, P.argmax(1), 3)
    assert cm.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]


def test_misclassified_lists_wrong_images_most_confident_first():
    rows = misclassified(pd.Series(["w", "x", "y", "z"]), Y, P, ["a", "b", "c"])
    assert rows["path"].tolist() == ["z", "x"]
    assert rows.iloc[0][["true", "predicted", "probability", "true_probability"]].tolist() == ["c", "b", 0.6, 0.3]
