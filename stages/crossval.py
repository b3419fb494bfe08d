"""Stage crossval@<model>: cross-validation of the head on the cached features.

Inputs:  ``--features`` folder from the extract stage (all three splits' features: every
         filtered image), ``--split-dir`` (the group of each image when ``split.group`` is set).
Outputs: ``--out-dir`` (one folder): summary.json (mean and standard deviation over the folds
         of accuracy, macro-F1 and cross-entropy; the numbers of folds, repeats and images:
         evaluation/summary.py CrossvalSummary) and folds.csv (every fold's sizes, learning rate,
         epochs, temperature and scores); ``--confusion`` JSON: {actual, predicted} for every
         out-of-fold prediction of every repeat (DVC's confusion plot: the pooled matrix).
Params:  ``crossval`` (folds, repeats, val_fraction), ``train`` (the protocol), ``base.seed``
         (library: plankton_transfer/models/crossval.py, folds.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.errors import run_cli
from plankton_transfer.files import atomic_path, write_csv, write_json
from plankton_transfer.models.crossval import CrossvalSummary, run_crossval
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.crossval import CrossvalParams
from plankton_transfer.params.train import TrainParams
from plankton_transfer.settings import run_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, required=True, help="features folder of one backbone")
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--out-dir", type=Path, required=True, help="summary.json and folds.csv")
    p.add_argument("--confusion", type=Path, required=True, help="pooled out-of-fold confusion (DVC plot JSON)")
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> CrossvalSummary:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, train_cfg = section(CrossvalParams, params, "crossval"), section(TrainParams, params, "train")
    result = run_crossval(args.features, args.split_dir, cfg, train_cfg, section(BaseParams, params, "base").seed,
                          run_settings())
    with atomic_path(args.out_dir, directory=True) as folder:
        folder.mkdir()
        result.summary.save_json(folder / "summary.json")
        write_csv(folder / "folds.csv", result.folds)
    write_json(args.confusion, result.confusion_rows)
    s = result.summary
    shown = ", ".join(f"{key} {v.mean:.4f} ± {v.sd:.4f}" for key, v in s.metrics.items())
    print(f"crossval {s.model}: {s.folds} folds x {s.repeats} repeats over {s.images} images: {shown}")
    return s


if __name__ == "__main__":
    run_cli(main)
