"""Stage crossval@<model>: cross-validation of the head on the cached features.

Inputs:  ``--features`` folder from the extract stage (all three splits' features: every
         filtered image), ``--split-dir`` (the group of each image when ``split.group`` is set).
Outputs: ``--metrics`` JSON (what ``dvc exp show`` lists): mean and standard deviation over
         the folds of accuracy, macro-F1 and cross-entropy, the numbers of folds, repeats and
         images; ``--folds`` CSV: every fold's sizes, learning rate, epochs, temperature and
         scores; ``--confusion`` JSON: {actual, predicted} for every out-of-fold prediction of
         every repeat (DVC's confusion plot: the pooled confusion matrix).
Params:  ``crossval`` (folds, repeats, val_fraction), ``train`` (the protocol), ``base.seed``
         (library: plankton_transfer/models/crossval.py, folds.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.features import load_meta
from plankton_transfer.errors import run_cli
from plankton_transfer.files import write_csv, write_json
from plankton_transfer.models.crossval import run_crossval
from plankton_transfer.params import BaseParams, CrossvalParams, TrainParams, params_argument, read_params, section


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="features folder of one backbone")
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--folds", type=Path, required=True, help="per-fold results (CSV)")
    p.add_argument("--confusion", type=Path, required=True, help="pooled out-of-fold confusion (DVC plot JSON)")
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, train_cfg = section(CrossvalParams, params, "crossval"), section(TrainParams, params, "train")
    name = load_meta(args.features)["backbone"]
    result = run_crossval(args.features, args.split_dir, cfg, train_cfg, section(BaseParams, params, "base").seed)
    write_csv(args.folds, result.folds)
    write_json(args.confusion, result.confusion_rows)
    write_json(args.metrics, {name: {"crossval": result.summary}})  # keyed like evaluate's: alexnet.crossval.*
    s = result.summary
    print(f"crossval {name}: {cfg.folds} folds x {cfg.repeats} repeats over {s['images']} images: accuracy "
          f"{s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f}, macro-F1 {s['macro_f1_mean']:.4f} ± "
          f"{s['macro_f1_std']:.4f}, loss {s['loss_mean']:.4f} ± {s['loss_std']:.4f}")
    return s


if __name__ == "__main__":
    run_cli(main)
