"""Every metric the project reports, defined once: its name, how it is computed (scikit-learn),
its interval, how it is shown, and whether it is a headline number.

Evaluate, crossval, compare, the model card, ``plankton-experiments`` and ``dvc exp show``
(through ``metrics/headline.json``, written by compare) all read :data:`METRICS` and
:data:`HEADLINE`; nothing else spells a metric's name.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def top_k(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Top-5 accuracy; top-(classes - 1) with fewer than 6 classes, so it stays informative
    (top-k over all classes is always 1)."""
    k = min(5, max(1, proba.shape[1] - 1))
    return float(skm.top_k_accuracy_score(y_true, proba, k=k, labels=np.arange(proba.shape[1])))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``; a prediction of a class absent
    from a small split is an error, not a reason for scikit-learn's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(skm.balanced_accuracy_score(y_true, y_pred))


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str  # the name in every record and table
    label: str  # for people
    compute: Callable[[np.ndarray, np.ndarray], float]  # (true labels, class probabilities) -> value
    interval: str | None = None  # "wilson" (a proportion), "simulated" (stats.interval_method) or None
    percent: bool = True  # shown as a percentage

    def show(self, value: float, low: float | None = None, high: float | None = None) -> str:
        """``90.0 [59.6, 98.2]`` (percent) or ``0.3579``; the interval where there is one."""
        scale, digits = (100, 1) if self.percent else (1, 4)
        text = f"{scale * value:.{digits}f}"
        if low is not None and high is not None:
            text += f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
        return text


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("accuracy", "accuracy", lambda y, p: float(skm.accuracy_score(y, p.argmax(axis=1))), interval="wilson"),
    Metric("balanced_accuracy", "balanced accuracy", lambda y, p: balanced_accuracy(y, p.argmax(axis=1)),
           interval="simulated"),
    Metric("macro_f1", "macro-F1", lambda y, p: float(skm.f1_score(y, p.argmax(axis=1), labels=np.arange(p.shape[1]),
                                                                   average="macro", zero_division=0)),
           interval="simulated"),
    Metric("top5", "top-5 accuracy", top_k),
    Metric("loss", "cross-entropy", lambda y, p: float(skm.log_loss(y, p, labels=np.arange(p.shape[1]))),
           percent=False),
)}
CROSSVAL_METRICS = ("accuracy", "macro_f1", "loss")  # what each fold reports


@dataclasses.dataclass(frozen=True)
class HeadlineEntry:
    """One number per model in ``metrics/headline.json`` (the only file ``dvc exp show`` lists)."""

    key: str  # short: dvc exp show's column is "<model>.<key>"
    source: str  # "test" (the evaluate stage's test split) | "crossval" (the mean over folds) | "openset"
    # (the openset stage: the mean over leave-classes-out repeats of the score predict uses)
    metric: str  # a key of METRICS
    bounds: bool = False  # also <key>_lo and <key>_hi


HEADLINE = (HeadlineEntry("acc", "test", "accuracy", bounds=True), HeadlineEntry("bal_acc", "test", "balanced_accuracy"),
            HeadlineEntry("f1", "test", "macro_f1"), HeadlineEntry("cv_acc", "crossval", "accuracy"),
            HeadlineEntry("unknown_auroc", "openset", "auroc"))
HEADLINE_DIGITS = 3  # a 0.1 % change is the finest the test sets of this field resolve


def score(y_true: np.ndarray, proba: np.ndarray, keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """The metrics ``keys`` (default: all) of class probabilities ``proba`` against ``y_true``."""
    return {key: METRICS[key].compute(y_true, proba) for key in (keys or METRICS)}


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(classes)), zero_division=0
    )
    return pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
