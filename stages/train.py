"""Stage train@<model>: train the new last layer on the cached features.

Inputs:  ``--features`` folder from the extract stage.
Outputs: ``--model-file`` (torch.save of plain tensors and strings, loadable with
         ``weights_only=True``): the head, class names, backbone name, weight source and
         sha256, preprocessing and training record: all that stages/predict.py needs;
         ``--live-dir``: DVCLive per-epoch train/val loss and accuracy (``dvc plots``).
Params:  ``train``, ``base.seed``.

Defaults are the study's: SGD, lr 0.001, momentum 0.9, batch 24, at most 100 epochs, early
stopping on validation cross-entropy with patience 20, best-validation-loss weights kept.
A list of learning rates trains one head per value in the same pass and keeps the one with
the lowest validation loss (the test set is never looked at).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from tqdm import tqdm

from stages.common import BaseParams, UserError, read_params, run_cli, section
from stages.features import load_meta, load_split
from stages.head import FitResult, LinearHeads, fit, make_optimizer, save_model_file
from stages.runtime import environment, resolve_device, seed_everything, use_deterministic_algorithms


@dataclasses.dataclass(frozen=True)
class TrainParams:
    lr: float | list[float] = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 24
    max_epochs: int = 100
    patience: int = 20
    device: str = "auto"

    @property
    def lrs(self) -> list[float]:
        return [float(v) for v in (self.lr if isinstance(self.lr, list) else [self.lr])]

    def __post_init__(self) -> None:
        if not self.lrs or min(self.lrs) <= 0:
            raise UserError(f"params.yaml: train.lr must be a positive number or a list of them, not {self.lr!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise UserError("params.yaml: train.batch_size, train.max_epochs and train.patience must be >= 1")


def load_tensors(folder: Path, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's float16 features and labels, resident on ``device``."""
    x, y = load_split(folder, split)
    return torch.from_numpy(np.array(x)).to(device), torch.from_numpy(y).to(device)  # np.array: read into memory


def train_heads(features: Path, cfg: TrainParams, seed: int) -> tuple[FitResult, dict, float]:
    """Fit one head per learning rate; returns the result, the features' meta and seconds."""
    meta = load_meta(features)
    device = resolve_device(cfg.device)
    generator = seed_everything(seed)
    use_deterministic_algorithms()
    train, val = load_tensors(features, "train", device), load_tensors(features, "val", device)
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


def log_history(live_dir: Path, result: FitResult, k: int) -> None:
    """Per-epoch curves of the chosen head, for ``dvc plots``."""
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        for epoch, row in enumerate(result.history[:result.epochs_run[k]], start=1):
            live.step = epoch
            for key, values in row.items():
                split, metric = key.split("_", 1)
                live.log_metric(f"{split}/{metric}", round(values[k], 6))
            live.next_step()
        live.summary = {"best_epoch": result.best_epoch[k], "epochs": result.epochs_run[k],
                        "best_val_loss": round(result.best_val_loss[k], 6)}


def model_record(result: FitResult, k: int, meta: dict, cfg: TrainParams, seed: int, seconds: float) -> dict:
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
            "params": dataclasses.asdict(cfg),
            "seed": seed,
            "environment": environment(resolve_device(cfg.device)),
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="features folder of one backbone")
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--live-dir", type=Path, required=True, help="DVCLive folder for the training curves")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, seed = section(TrainParams, params, "train"), section(BaseParams, params, "base").seed
    result, meta, seconds = train_heads(args.features, cfg, seed)
    k = min(range(len(cfg.lrs)), key=lambda i: result.best_val_loss[i])
    record = model_record(result, k, meta, cfg, seed, seconds)
    log_history(args.live_dir, result, k)
    save_model_file(record, args.model_file)
    t = record["training"]
    print(f"train {meta['backbone']}: lr {t['lr']}, {t['epochs']} epochs (best {t['best_epoch']}), "
          f"val loss {t['best_val_loss']:.4f}, {seconds:.1f} s")
    return record


if __name__ == "__main__":
    run_cli(main)
