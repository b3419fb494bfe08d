"""Stage train@<model>: train the new last layer on the cached features.

Inputs:  ``--features`` folder from the extract stage.
Outputs: ``--model-file`` (torch.save of plain tensors and strings, loadable with
         ``weights_only=True``): the head, class names, backbone name, weight source and
         sha256, preprocessing and training record: all that prediction needs; the temperature
         fitted on the validation split (``calibration``), applied to every probability reported;
         ``--live-dir``: DVCLive per-epoch train/val loss and accuracy (``dvc plots``).
         The model file also holds per-class probability thresholds that reach
         ``thresholds.target_precision`` on the validation set (models/thresholds.py).
Params:  ``train``, ``base.seed``, ``thresholds`` (library: plankton_transfer/models/training.py, heads.py).

Defaults are the study's: SGD, lr 0.001, momentum 0.9, batch 24, at most 100 epochs, early
stopping on validation cross-entropy with patience 20, best-validation-loss weights kept.
A list of learning rates trains one head per value in the same pass and keeps the one with
the lowest validation loss (the test set is never looked at).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dvclive import Live

from plankton_transfer.errors import run_cli
from plankton_transfer.models.heads import FitResult, save_model_file
from plankton_transfer.models.thresholds import validation_thresholds
from plankton_transfer.models.training import best_head, calibration_record, model_record, train_heads
from plankton_transfer.params import BaseParams, ThresholdParams, TrainParams, params_argument, read_params, section


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="features folder of one backbone")
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--live-dir", type=Path, required=True, help="DVCLive folder for the training curves")
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, seed = section(TrainParams, params, "train"), section(BaseParams, params, "base").seed
    target_precision = section(ThresholdParams, params, "thresholds").target_precision
    result, meta, seconds = train_heads(args.features, cfg, seed)
    k = best_head(result)
    record = model_record(result, k, meta, cfg, seed, seconds)
    record["calibration"] = calibration_record(record, args.features)  # temperature scaling on val
    # last, from the finished record, so the thresholds see the (calibrated) probabilities prediction will use
    record["thresholds"] = validation_thresholds(record, args.features, target_precision)
    log_history(args.live_dir, result, k)
    save_model_file(record, args.model_file)
    t = record["training"]
    print(f"train {meta['backbone']}: lr {t['lr']}, {t['epochs']} epochs (best {t['best_epoch']}), "
          f"val loss {t['best_val_loss']:.4f}, {seconds:.1f} s; temperature {record['calibration']['temperature']:.3f} "
          f"(val loss {record['calibration']['val_loss_after']:.4f} after scaling)")
    return record


if __name__ == "__main__":
    run_cli(main)
