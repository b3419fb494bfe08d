"""The train stage's work: the new last layer trained on a backbone's cached features with the
study's protocol (models/heads.py), calibrated and given its thresholds on the validation
split, as one :class:`~plankton_transfer.models.model_file.ModelFile`."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from plankton_transfer.data.features import load_split
from plankton_transfer.evaluation.calibration import fit_temperature
from plankton_transfer.models.heads import FitResult, RowGroup, best_of, fit_heads
from plankton_transfer.models.model_file import Calibration, ModelFile, TrainingInfo
from plankton_transfer.models.provenance import FeatureMeta, load_meta
from plankton_transfer.models.thresholds import class_thresholds
from plankton_transfer.params.train import TrainParams
from plankton_transfer.runtime import (environment, free_memory, resolve_device, seed_everything,
                                       use_deterministic_algorithms)
from plankton_transfer.settings import RunSettings

RESIDENT_SHARE = 0.5  # auto: keep features resident when they take at most this share of the free memory,
# leaving the rest to the evaluation chunks, the page cache the file is read through, and other processes
LOAD_ROWS = 65536  # rows copied at a time, so loading never holds a second full copy in host memory


class SplitRows:
    """The rows of several memory-mapped splits as one indexable matrix (streamed training)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), parts[0].shape[1])

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        out = np.empty((len(idx), self.shape[1]), dtype=np.float16)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for i, part in enumerate(self.parts):
            mask = which == i
            if mask.any():
                out[mask] = part[idx[mask] - self.starts[i]]
        return out


def resident_rows(parts: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """The splits' float16 rows as one float32 matrix on ``device``, copied in pieces."""
    out = torch.empty((sum(len(p) for p in parts), parts[0].shape[1]), dtype=torch.float32, device=device)
    start = 0
    for part in parts:
        for lo in range(0, len(part), LOAD_ROWS):
            chunk = torch.from_numpy(np.array(part[lo:lo + LOAD_ROWS], dtype=np.float32))
            out[start + lo:start + lo + len(chunk)] = chunk.to(device)
        start += len(part)
    return out


def feature_placement(mode: str, folder: Path, device: torch.device) -> dict:
    """Resident or streamed features for training: ``mode`` when forced (PLANKTON_FEATURES), else
    resident when train and val features, as float32, fit in :data:`RESIDENT_SHARE` of the free memory."""
    need = 2 * sum((folder / f"{s}.npy").stat().st_size for s in ("train", "val") if (folder / f"{s}.npy").is_file())
    free = free_memory(device)
    placement = mode if mode != "auto" else ("resident" if need <= RESIDENT_SHARE * free else "stream")
    return {"placement": placement, "chosen_by": "auto" if mode == "auto" else "PLANKTON_FEATURES",
            "feature_bytes": need, "free_bytes": free, "device": str(device)}


@dataclasses.dataclass
class TrainedHeads:
    fit: FitResult
    best: int  # the chosen head (learning rate)
    placement: dict
    seconds: float


def train_heads(features: Path, meta: FeatureMeta, cfg: TrainParams, seed: int, settings: RunSettings) -> TrainedHeads:
    """One head per learning rate on the train split, early-stopped on the val split."""
    device = resolve_device(settings.device)
    seed_everything(seed)
    use_deterministic_algorithms()
    placement = feature_placement(settings.features, Path(features), device)
    (x_train, y_train), (x_val, y_val) = load_split(features, "train"), load_split(features, "val")
    parts = [x_train, x_val]
    x = resident_rows(parts, device) if placement["placement"] == "resident" else SplitRows(parts)
    y = torch.from_numpy(np.concatenate([y_train, y_val])).to(device)
    group = RowGroup(train=np.arange(len(y_train)), val=np.arange(len(y_train), len(y)))
    bar = tqdm(total=cfg.max_epochs, desc="train", unit="epoch", mininterval=1.0)

    def show(epoch: int, row: dict) -> None:
        bar.update(1)
        bar.set_postfix(val_loss=f"{min(row['val_loss']):.4f}", refresh=False)

    start = time.perf_counter()
    fit = fit_heads(x, y, [group], len(meta.classes), cfg, seed, history=True, progress=show)
    seconds = time.perf_counter() - start
    bar.close()
    return TrainedHeads(fit, best_of(fit, 0, len(cfg.lrs)), placement, seconds)


def training_info(trained: TrainedHeads, cfg: TrainParams, seed: int, device: torch.device) -> TrainingInfo:
    fit, k = trained.fit, trained.best
    params = dataclasses.asdict(cfg)
    params["lr"] = list(cfg.lrs) if isinstance(cfg.lr, tuple) else cfg.lr
    return TrainingInfo(lr=cfg.lrs[k], epochs=fit.epochs_run[k], best_epoch=fit.best_epoch[k],
                        best_val_loss=fit.best_val_loss[k], seconds=trained.seconds,
                        lr_sweep={str(lr): loss for lr, loss in zip(cfg.lrs, fit.best_val_loss)}, params=params,
                        seed=seed, features=trained.placement, environment=environment(device))


def calibrate(head, x_val: np.ndarray, y_val: np.ndarray) -> Calibration:
    """Temperature scaling of the chosen head, fitted on the validation split (never the test
    split), applied wherever probabilities are reported (evaluation/calibration.py)."""
    fitted = fit_temperature(head.logits(x_val), y_val)
    return Calibration(temperature=fitted["temperature"], val_loss_before=fitted["val_loss_before"],
                       val_loss_after=fitted["val_loss_after"],
                       method="temperature scaling: validation cross-entropy minimised, weak prior on log T")


def train_model(features: Path, name: str, cfg: TrainParams, target_precision: float, seed: int,
                settings: RunSettings) -> tuple[ModelFile, TrainedHeads]:
    """The model file of ``name``: the best head, its calibration and thresholds, and its provenance."""
    meta = load_meta(features)
    trained = train_heads(features, meta, cfg, seed, settings)
    head = trained.fit.heads[trained.best]
    x_val, y_val = load_split(features, "val")
    calibration = calibrate(head, np.asarray(x_val), y_val)
    proba = head.probabilities(x_val, calibration.temperature)
    thresholds = class_thresholds(y_val, proba, list(meta.classes), target_precision, meta.weights.pretrained)
    model = ModelFile(name=name, backbone=meta.backbone, weights=meta.weights, input=meta.input,
                      feature_dim=meta.feature_dim, classes=meta.classes, head=head,
                      training=training_info(trained, cfg, seed, resolve_device(settings.device)),
                      calibration=calibration, thresholds=thresholds, data=meta.data)
    return model, trained
