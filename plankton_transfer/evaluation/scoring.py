"""Scoring a trained head on the cached validation and test features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.data.features import load_split
from plankton_transfer.evaluation.metrics import summary_metrics
from plankton_transfer.models.heads import head_probabilities


def split_probabilities(record: dict, features: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, class probabilities) of one split."""
    x, y_true = load_split(features, split)
    return y_true, head_probabilities(record, x)


def misclassified(paths: pd.Series, y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Wrongly classified images, most confident first."""
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return pd.DataFrame({
        "path": paths.to_numpy()[wrong],
        "true": [classes[i] for i in y_true[wrong]],
        "predicted": [classes[i] for i in y_pred[wrong]],
        "probability": proba[wrong, y_pred[wrong]].round(4),
        "true_probability": proba[wrong, y_true[wrong]].round(4),
    }).sort_values("probability", ascending=False)


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def model_summary(record: dict, meta: dict, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The numbers ``dvc exp show`` lists for one model: quality numbers, epochs and the pretrained
    flag. Where the weights came from and timings (which change on every run and would fill
    ``dvc exp show --only-changed``) are in the run record."""
    training = record["training"]
    head_size = int(record["head"]["weight"].numel() + record["head"]["bias"].numel())
    return {
        "pretrained": record["weights"]["pretrained"],
        **{split: rounded(summary_metrics(y, proba)) for split, (y, proba) in scores.items()},
        "epochs": training["epochs"],
        "best_epoch": training["best_epoch"],
        "lr": training["lr"],
        "parameters": meta["backbone_parameters"] + head_size,
    }


def run_record(record: dict, meta: dict) -> dict:
    """Everything that determined the metrics, for reproducing them later."""
    training = record["training"]
    return {
        "backbone": record["backbone"],
        "weights": record["weights"],
        "preprocess": record["preprocess"],
        "classes": record["classes"],
        "split_sizes": meta["sizes"],
        "train_params": training["params"],
        "seed": training["seed"],
        "deterministic_algorithms": True,  # plankton_transfer/runtime.py: use_deterministic_algorithms
        "lr_sweep_best_val_loss": training["lr_sweep"],
        "timing": {"train_seconds": round(training["seconds"], 3), "extract_seconds": meta["seconds"],
                   "extract_images_per_s": meta["images_per_s"]},
        "extract_environment": meta["environment"],
        "train_environment": training["environment"],
        "train_features": stable_placement(training.get("features")),
    }


def stable_placement(placement: dict | None) -> dict | None:
    """Resident or streamed training features, and why, without the free memory seen at the
    time (it changes run to run; the model file's training record keeps it)."""
    if placement is None:  # a model file from before the choice was recorded
        return None
    return {k: v for k, v in placement.items() if k != "free_bytes"}


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One {actual, predicted} row per image: DVC's confusion-plot data."""
    return [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y_true, y_pred)]
