"""Training the new last layer on a backbone's cached features (the study's protocol, see
plankton_transfer/models/heads.py), and the model file's record of how it was made."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from plankton_transfer.data.features import load_meta, load_split
from plankton_transfer.evaluation.calibration import fit_temperature
from plankton_transfer.models.heads import Features, FitResult, LinearHeads, fit, head_logits, make_optimizer
from plankton_transfer.params import TrainParams
from plankton_transfer.runtime import environment, free_memory, resolve_device, seed_everything, use_deterministic_algorithms


RESIDENT_SHARE = 0.5  # auto: keep features resident when they take at most this share of the free memory,
# leaving the rest to the evaluation chunks, the page cache the file is read through, and other processes
LOAD_ROWS = 65536  # rows copied at a time, so loading never holds a second full copy in host memory


def load_tensors(folder: Path, split: str, device: torch.device, resident: bool = True) -> tuple[Features, torch.Tensor]:
    """A split's float16 features, resident on ``device`` (or left memory-mapped), and labels on ``device``."""
    x, y = load_split(folder, split)
    labels = torch.from_numpy(y).to(device)
    if not resident:
        return x, labels
    out = torch.empty(x.shape, dtype=torch.float16, device=device)
    for start in range(0, len(x), LOAD_ROWS):
        out[start:start + LOAD_ROWS] = torch.from_numpy(np.array(x[start:start + LOAD_ROWS]))
    return out, labels


def feature_placement(mode: str, folder: Path, device: torch.device) -> dict:
    """Resident or streamed features for training: ``mode`` when forced, else resident when
    train and val features fit in :data:`RESIDENT_SHARE` of the device's free memory."""
    need = sum((folder / f"{s}.npy").stat().st_size for s in ("train", "val") if (folder / f"{s}.npy").is_file())
    free = free_memory(device)
    placement = mode if mode != "auto" else ("resident" if need <= RESIDENT_SHARE * free else "stream")
    return {"placement": placement, "chosen_by": "auto" if mode == "auto" else "train.features_on_device",
            "feature_bytes": need, "free_bytes": free, "device": str(device)}


def train_heads(features: Path, cfg: TrainParams, seed: int) -> tuple[FitResult, dict, float]:
    """Fit one head per learning rate; returns the result, the features' meta (with how the
    features were held, ``meta["train_features"]``) and seconds."""
    meta = load_meta(features)
    device = resolve_device(cfg.device)
    generator = seed_everything(seed)
    use_deterministic_algorithms()
    placement = feature_placement(cfg.features_on_device, Path(features), device)
    resident = placement["placement"] == "resident"
    train, val = load_tensors(features, "train", device, resident), load_tensors(features, "val", device, resident)
    meta = {**meta, "train_features": placement}
    heads = LinearHeads(len(cfg.lrs), meta["feature_dim"], len(meta["classes"]), seed).to(device)
    optimizer = make_optimizer(heads, cfg.lrs, cfg.momentum, cfg.weight_decay)
    bar = tqdm(total=cfg.max_epochs, desc="train", unit="epoch", mininterval=1.0)

    def show(epoch: int, row: dict) -> None:
        bar.update(1)
        bar.set_postfix(val_loss=f"{min(row['val_loss']):.4f}", refresh=False)

    start = time.perf_counter()
    result = fit(heads, optimizer, train, val, cfg.batch_size, cfg.max_epochs, cfg.patience, generator, show)
    seconds = time.perf_counter() - start
    bar.close()
    return result, meta, seconds


def best_head(result: FitResult) -> int:
    """The head (learning rate) with the lowest validation loss; the test set is never looked at."""
    return min(range(len(result.best_val_loss)), key=lambda i: result.best_val_loss[i])


def model_record(result: FitResult, k: int, meta: dict, cfg: TrainParams, seed: int, seconds: float) -> dict:
    """Everything a model file holds: the head and all that predict needs to use it."""
    params = dataclasses.asdict(cfg)
    params["lr"] = list(cfg.lrs) if isinstance(cfg.lr, tuple) else cfg.lr
    return {
        "backbone": meta["backbone"],
        "weights": meta["weights"],
        "preprocess": meta["preprocess"],
        "feature_dim": meta["feature_dim"],
        "classes": meta["classes"],
        "head": result.best_states[k],
        "training": {
            "lr": cfg.lrs[k],
            "epochs": result.epochs_run[k],
            "best_epoch": result.best_epoch[k],
            "best_val_loss": result.best_val_loss[k],
            "seconds": seconds,
            "lr_sweep": {str(lr): loss for lr, loss in zip(cfg.lrs, result.best_val_loss)},
            "params": params,
            "seed": seed,
            "features": meta.get("train_features"),  # resident or streamed, and why
            "environment": environment(resolve_device(cfg.device)),
        },
    }


def calibration_record(record: dict, features: Path) -> dict:
    """Temperature scaling of the chosen head, fitted on the validation split (never the test
    split): stored in the model file as ``record["calibration"]`` and applied by
    ``head_probabilities`` wherever probabilities are reported."""
    x, y = load_split(features, "val")
    fitted = fit_temperature(head_logits(record, np.asarray(x)), y)
    return {**fitted, "method": "temperature scaling: validation cross-entropy minimised, weak prior on log T"}
