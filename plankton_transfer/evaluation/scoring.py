"""The evaluate stage's work: a model file scored on the cached validation and test features,
as the typed summary and run record (evaluation/summary.py) and the per-image tables."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.evaluation.summary import EvaluationSummary, RunRecord
from plankton_transfer.evaluation.uncertainty import Assessment, assess
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.provenance import FeatureMeta
from plankton_transfer.params.stats import StatsParams


@dataclasses.dataclass
class Evaluation:
    summary: EvaluationSummary
    run: RunRecord
    assessment: Assessment


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


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One {actual, predicted} row per image: DVC's confusion-plot data."""
    return [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y_true, y_pred)]


def stable_placement(placement: dict) -> dict:
    """Resident or streamed training features, and why, without the free memory seen at the
    time (it changes run to run; the model file's training record keeps it)."""
    return {k: v for k, v in placement.items() if k != "free_bytes"}


def run_record(model: ModelFile, fingerprint: str, meta: FeatureMeta) -> RunRecord:
    t = model.training
    return RunRecord(model=model.name, model_fingerprint=fingerprint, backbone=model.backbone, weights=model.weights,
                     input=model.input, classes=model.classes, data=model.data, train_params=t.params, seed=t.seed,
                     deterministic_algorithms=True,  # plankton_transfer/runtime.py: use_deterministic_algorithms
                     lr_sweep_best_val_loss=t.lr_sweep, convergence_warning=t.convergence_warning(model.name),
                     timing={"train_seconds": round(t.seconds, 3), "extract_seconds": meta.seconds,
                             "extract_images_per_s": meta.images_per_s},
                     extract_environment=meta.environment, train_environment=t.environment,
                     train_features=stable_placement(t.features))


def evaluate_model(model: ModelFile, features: Path, meta: FeatureMeta, cfg: StatsParams, seed: int,
                   test_samples: np.ndarray | None = None) -> Evaluation:
    """Every number the evaluate stage reports for one model (``test_samples``: each test image's
    sample, "" where unknown, for per-sample abundance)."""
    fingerprint = model.fingerprint()
    assessment = assess(model, features, cfg, seed, test_samples)
    t = model.training
    summary = EvaluationSummary(
        model=model.name, model_fingerprint=fingerprint, pretrained=model.pretrained, weights=model.weights.description,
        parameters=meta.backbone_parameters + model.head.weight.numel() + model.head.bias.numel(),
        epochs=t.epochs, best_epoch=t.best_epoch, lr=t.lr, convergence_warning=t.convergence_warning(model.name),
        splits=assessment.splits, interval_method=cfg.interval_method, confidence=cfg.confidence,
        calibration=assessment.calibration, abundance=assessment.abundance, review=assessment.review)
    return Evaluation(summary, run_record(model, fingerprint, meta), assessment)
