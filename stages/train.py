"""Stage train@<model>: train the new last layer on the cached features.

Inputs:  ``--features`` folder from the extract stage.
Outputs: ``--model-file`` (plankton_transfer/models/model_file.py: ModelFile, saved as plain
         tensors and values, loadable with ``weights_only=True``): the head, classes, backbone,
         weight source and sha256, input recipe, training record, the temperature fitted on the
         validation split, per-class thresholds (models/thresholds.py) and the data it came from:
         all that prediction and export need;
         ``--live-dir``: DVCLive per-epoch train/val loss and accuracy (``dvc plots``).
Params:  ``train``, ``base.seed``, ``thresholds`` (library: plankton_transfer/models/training.py, heads.py).

Defaults are the study's: SGD, lr 0.001, momentum 0.9, batch 24, at most 100 epochs, early
stopping on validation cross-entropy with patience 20, best-validation-loss weights kept.
A list of learning rates trains one head per value in the same pass and keeps the one with
the lowest validation loss (the test set is never looked at).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dvclive import Live

from plankton_transfer.errors import run_cli
from plankton_transfer.models.heads import FitResult
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.training import train_model
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.thresholds import ThresholdParams
from plankton_transfer.params.train import TrainParams
from plankton_transfer.settings import run_settings


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="features folder of one backbone")
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--live-dir", type=Path, required=True, help="DVCLive folder for the training curves")
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> ModelFile:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, seed = section(TrainParams, params, "train"), section(BaseParams, params, "base").seed
    target = section(ThresholdParams, params, "thresholds").target_precision
    model, trained = train_model(args.features, args.model_file.stem, cfg, target, seed, run_settings())
    log_history(args.live_dir, trained.fit, trained.best)
    model.save(args.model_file)
    t, c = model.training, model.calibration
    print(f"train {model.name}: lr {t.lr}, {t.epochs} epochs (best {t.best_epoch}), val loss {t.best_val_loss:.4f}, "
          f"{t.seconds:.1f} s; temperature {c.temperature:.3f} (val loss {c.val_loss_after:.4f} after scaling); "
          f"{sum(v is not None for v in model.thresholds.per_class.values())} of {len(model.classes)} classes "
          f"have an auto-accept threshold")
    if not t.converged:
        print(f"  warning: {t.convergence_warning(model.name)}", file=sys.stderr)
    return model


if __name__ == "__main__":
    run_cli(main)
