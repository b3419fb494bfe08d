"""Classification metrics, computed with scikit-learn."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def summary_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, top-5 accuracy, cross-entropy, macro-F1 and balanced accuracy.

    Top-5 becomes top-(classes - 1) when there are fewer than 6 classes, so it stays
    informative (top-k over all classes is always 1).
    """
    labels = np.arange(proba.shape[1])
    y_pred = proba.argmax(axis=1)
    k = min(5, max(1, proba.shape[1] - 1))
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "top5": float(skm.top_k_accuracy_score(y_true, proba, k=k, labels=labels)),
        "loss": float(skm.log_loss(y_true, proba, labels=labels)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy(y_true, y_pred)),
    }


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``; a prediction of a class absent
    from a small split is an error, not a reason for scikit-learn's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(skm.balanced_accuracy_score(y_true, y_pred))


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(classes)), zero_division=0
    )
    return pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
