"""Cross-validation of the head on a backbone's cached features (stage crossval@<model>).

Repeated stratified k-fold over all filtered images (the train, val and test splits'
features together), each fold trained with the train stage's protocol and scored on its test
part; see plankton_transfer/models/folds.py for the folds and the batched training. Reports
the mean, the standard deviation (over folds, ddof 1) and every fold's accuracy, macro-F1 and
cross-entropy (temperature-scaled, as the train stage's model files are), and the confusion
matrix pooled over the out-of-fold predictions of every repeat.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from plankton_transfer.data.features import SPLITS, load_meta, load_split
from plankton_transfer.data.splitting import read_splits
from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.calibration import fit_temperature, scaled_probabilities
from plankton_transfer.evaluation.metrics import summary_metrics
from plankton_transfer.models.folds import Fold, FoldsFit, fit_folds, make_folds
from plankton_transfer.models.heads import head_logits
from plankton_transfer.params import CrossvalParams, TrainParams
from plankton_transfer.runtime import resolve_device, seed_everything, use_deterministic_algorithms


SMALL_WORK_CELLS = 50_000_000  # feature cells (x heads, for threads) below which the shortcuts below pay


@dataclasses.dataclass
class CrossvalResult:
    summary: dict[str, float]  # numbers only: what `dvc exp show` lists
    folds: pd.DataFrame  # one row per fold
    confusion_rows: list[dict]  # {actual, predicted} per out-of-fold prediction, every repeat


def load_all_features(features: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every image's features and label, in split order (train, val, test), as the split CSVs."""
    parts = [load_split(features, split) for split in SPLITS]
    return np.concatenate([np.asarray(x) for x, _ in parts]), np.concatenate([y for _, y in parts])


def read_groups(split_dir: Path, n_rows: int) -> np.ndarray | None:
    """The split stage's group ids (``split.group``) in feature order; None when not grouped."""
    parts = read_splits(split_dir)
    frame = pd.concat([parts[s] for s in SPLITS], ignore_index=True)
    if len(frame) != n_rows:
        raise UserError(f"{split_dir} lists {len(frame)} images but the features hold {n_rows}; re-run extract")
    if "group" not in frame or (frame["group"].astype(str) == "").all():
        return None
    return frame["group"].astype(str).to_numpy()


def best_of_fold(fitted: FoldsFit, fold_index: int, per_fold: int) -> int:
    """The fold's head (learning rate) with the lowest validation loss."""
    heads = range(fold_index * per_fold, (fold_index + 1) * per_fold)
    return min(heads, key=lambda k: fitted.best_val_loss[k])


def score_fold(fold: Fold, head: dict, x: np.ndarray, y: np.ndarray) -> tuple[dict, np.ndarray]:
    """Temperature on the fold's validation part, then the fold's test metrics and predictions."""
    record = {"head": head}
    temperature = fit_temperature(head_logits(record, x[fold.val]), y[fold.val])["temperature"]
    proba = scaled_probabilities(head_logits(record, x[fold.test]), temperature)
    m = summary_metrics(y[fold.test], proba)
    row = {"repeat": fold.repeat + 1, "fold": fold.fold + 1, "train": len(fold.train), "val": len(fold.val),
           "test": len(fold.test), "temperature": round(temperature, 4),
           **{key: round(m[key], 4) for key in ("accuracy", "macro_f1", "loss")}}
    return row, proba.argmax(axis=1)


def summarise(table: pd.DataFrame, cfg: CrossvalParams, images: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("accuracy", "macro_f1", "loss"):
        values = table[key].to_numpy(dtype=float)
        out[f"{key}_mean"] = round(float(values.mean()), 4)
        out[f"{key}_std"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)
    return out | {"folds": cfg.folds, "repeats": cfg.repeats, "images": images}


@contextlib.contextmanager
def few_threads_for_small_work(device: torch.device, cells: int) -> Iterator[None]:
    """One CPU thread while the per-epoch work is small: each op then takes microseconds, and
    handing tiny ops to a thread pool costs more than it saves (tenfold on a busy machine)."""
    before = torch.get_num_threads()
    if device.type == "cpu" and cells < SMALL_WORK_CELLS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_crossval(features: Path, split_dir: Path, cfg: CrossvalParams, train_cfg: TrainParams,
                 seed: int) -> CrossvalResult:
    """Cross-validate the head on ``features`` (one backbone's folder from the extract stage)."""
    classes = load_meta(features)["classes"]
    x, y = load_all_features(features)
    folds = make_folds(y, read_groups(split_dir, len(y)), cfg, seed)
    device = resolve_device(train_cfg.device)
    seed_everything(seed)
    use_deterministic_algorithms()
    small = x.size < SMALL_WORK_CELLS  # then float32 once instead of a cast per batch (same values)
    features = torch.from_numpy(x.astype(np.float32) if small else x).to(device)
    with few_threads_for_small_work(device, x.size * len(folds) * len(train_cfg.lrs)):
        fitted = fit_folds(features, torch.from_numpy(y).to(device), len(classes), folds, train_cfg, seed)
    rows, confusion_rows = [], []
    per_fold = len(train_cfg.lrs)
    for i, fold in enumerate(folds):
        k = best_of_fold(fitted, i, per_fold)
        row, predicted = score_fold(fold, fitted.best_states[k], x, y)
        rows.append({**row, "lr": train_cfg.lrs[k % per_fold], "epochs": fitted.epochs_run[k],
                     "best_epoch": fitted.best_epoch[k]})
        confusion_rows += [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y[fold.test], predicted)]
    table = pd.DataFrame(rows)
    return CrossvalResult(summarise(table, cfg, len(y)), table, confusion_rows)
