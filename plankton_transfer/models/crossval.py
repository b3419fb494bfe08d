"""Cross-validation of the head on a backbone's cached features (stage crossval@<model>).

Repeated stratified k-fold over all filtered images (the train, val and test splits'
features together), each fold trained with the train stage's protocol by the same trainer
(models/heads.py: fit_heads, every fold at once) and scored on its test part; see
plankton_transfer/models/folds.py for the folds. Reports the mean, the standard deviation
(over folds, ddof 1) and every fold's value of the metrics of evaluation/metrics.py
CROSSVAL_METRICS (temperature-scaled, as the train stage's model files are), and the confusion
matrix pooled over the out-of-fold predictions of every repeat.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plankton_transfer.data.features import SPLITS, load_split
from plankton_transfer.data.split_files import read_splits
from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.calibration import fit_temperature
from plankton_transfer.evaluation.metrics import CROSSVAL_METRICS, score
from plankton_transfer.evaluation.summary import CrossvalSummary, MeanSd
from plankton_transfer.models.folds import Fold, make_folds
from plankton_transfer.models.heads import FitResult, best_of, fit_heads
from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.models.provenance import load_meta
from plankton_transfer.params.crossval import CrossvalParams
from plankton_transfer.params.train import TrainParams
from plankton_transfer.runtime import resolve_device, seed_everything, use_deterministic_algorithms
from plankton_transfer.settings import RunSettings

HEADS_AT_ONCE = 64  # folds x learning rates trained in one pass; more are trained in chunks (same result)


@dataclasses.dataclass
class CrossvalResult:
    summary: CrossvalSummary
    folds: pd.DataFrame  # one row per fold
    confusion_rows: list[dict]  # {actual, predicted} per out-of-fold prediction, every repeat


def load_all_features(features: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every image's features (float32) and label, in split order (train, val, test), as the split CSVs."""
    parts = [load_split(features, split) for split in SPLITS]
    return np.concatenate([np.asarray(x, dtype=np.float32) for x, _ in parts]), np.concatenate([y for _, y in parts])


def read_groups(split_dir: Path, n_rows: int) -> np.ndarray | None:
    """The split stage's group ids (``split.group``) in feature order; None when not grouped."""
    parts = read_splits(split_dir)
    frame = pd.concat([parts[s] for s in SPLITS], ignore_index=True)
    if len(frame) != n_rows:
        raise UserError(f"{split_dir} lists {len(frame)} images but the features hold {n_rows}; re-run extract")
    if "group" not in frame or (frame["group"].astype(str) == "").all():
        return None
    return frame["group"].astype(str).to_numpy()


def score_fold(fold: Fold, head: LinearHead, x: np.ndarray, y: np.ndarray) -> tuple[dict, np.ndarray]:
    """Temperature on the fold's validation part, then the fold's test metrics and predictions."""
    temperature = fit_temperature(head.logits(x[fold.val]), y[fold.val])["temperature"]
    proba = head.probabilities(x[fold.test], temperature)
    m = score(y[fold.test], proba, CROSSVAL_METRICS)
    row = {"repeat": fold.repeat + 1, "fold": fold.fold + 1, "train": len(fold.train), "val": len(fold.val),
           "test": len(fold.test), "temperature": round(temperature, 4), **{k: round(v, 4) for k, v in m.items()}}
    return row, proba.argmax(axis=1)


def summarise(name: str, table: pd.DataFrame, cfg: CrossvalParams, images: int) -> CrossvalSummary:
    metrics = {}
    for key in CROSSVAL_METRICS:
        values = table[key].to_numpy(dtype=float)
        metrics[key] = MeanSd(round(float(values.mean()), 4),
                              round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4))
    return CrossvalSummary(model=name, folds=cfg.folds, repeats=cfg.repeats, images=images, metrics=metrics)


def fit_folds(x: torch.Tensor, y: torch.Tensor, folds: list[Fold], n_classes: int, cfg: TrainParams,
              seed: int) -> FitResult:
    """Every fold's heads, trained :data:`HEADS_AT_ONCE` at a time (each fold's own seed, so
    the chunking never changes a result)."""
    per_chunk = max(1, HEADS_AT_ONCE // len(cfg.lrs))
    parts = [fit_heads(x, y, [f.rows for f in folds[start:start + per_chunk]], n_classes, cfg, seed,
                       first_group=start) for start in range(0, len(folds), per_chunk)]
    return FitResult(*(sum((getattr(p, f.name) for p in parts), []) for f in dataclasses.fields(FitResult)))


def run_crossval(features: Path, split_dir: Path, cfg: CrossvalParams, train_cfg: TrainParams, seed: int,
                 settings: RunSettings) -> CrossvalResult:
    """Cross-validate the head on ``features`` (one backbone's folder from the extract stage)."""
    meta = load_meta(features)
    classes = list(meta.classes)
    x, y = load_all_features(features)
    folds = make_folds(y, read_groups(split_dir, len(y)), cfg, seed)
    device = resolve_device(settings.device)
    seed_everything(seed)
    use_deterministic_algorithms()
    fitted = fit_folds(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), folds, len(classes),
                       train_cfg, seed)
    rows, confusion_rows = [], []
    per_fold = len(train_cfg.lrs)
    for i, fold in enumerate(folds):
        k = best_of(fitted, i, per_fold)
        row, predicted = score_fold(fold, fitted.heads[k], x, y)
        rows.append({**row, "lr": train_cfg.lrs[k % per_fold], "epochs": fitted.epochs_run[k],
                     "best_epoch": fitted.best_epoch[k]})
        confusion_rows += [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y[fold.test], predicted)]
    table = pd.DataFrame(rows)
    return CrossvalResult(summarise(meta.backbone, table, cfg, len(y)), table, confusion_rows)
