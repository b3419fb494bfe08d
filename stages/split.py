"""Stage split: stratified, deterministic train/val/test manifests, checked for leakage.

Inputs:  ``--manifest`` from the filter stage; the images under ``data.raw`` (or ``--raw``), whose
         pixels confirm or reject near-duplicate candidates found by their perceptual hashes.
Outputs: ``--out-dir``/{train,val,test}.csv (the manifest's columns and ``group``: the group
         id when ``split.group`` is set, else empty); ``--report`` JSON: split sizes, the
         grouping, asked against realised fractions (overall and per class, and the largest
         difference), the classes missing from a split and the near-duplicate counts; ``--near-duplicates`` CSV: every near-duplicate candidate
         in different splits, with both paths, their splits and classes, the hash distance, the
         pixel similarity and whether it is confirmed.
Params:  ``split`` (fractions, group, near_duplicate_*), ``base.seed``, ``data.raw``, ``image``
         (library: plankton_transfer/data/split_checks.py, splitting.py, grouping.py, leakage.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.images import load_rgb
from plankton_transfer.data.split_checks import split_and_check
from plankton_transfer.data.split_files import read_manifest
from plankton_transfer.errors import run_cli
from plankton_transfer.files import write_csv, write_json
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.data import DataParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.split import SplitParams


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("data/filtered/manifest.csv"))
    p.add_argument("--out-dir", type=Path, default=Path("data/split"))
    p.add_argument("--report", type=Path, help="default: split_report.json beside --out-dir")
    p.add_argument("--near-duplicates", type=Path, help="default: split_near_duplicates.csv beside --out-dir")
    p.add_argument("--raw", type=Path, help="image folder (default: data.raw from the params file)")
    params_argument(p)
    args = p.parse_args(argv)
    args.report = args.report or args.out_dir.parent / "split_report.json"
    args.near_duplicates = args.near_duplicates or args.out_dir.parent / "split_near_duplicates.csv"
    return args


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    params = read_params(args.params)
    fractions, seed = section(SplitParams, params, "split"), section(BaseParams, params, "base").seed
    raw, image_cfg = args.raw or Path(section(DataParams, params, "data").raw), section(ImageParams, params, "image")
    result = split_and_check(read_manifest(args.manifest), fractions, seed, lambda path: load_rgb(raw / path, image_cfg))
    for name, part in result.parts.items():
        write_csv(args.out_dir / f"{name}.csv", part)
    write_csv(args.near_duplicates, result.near_duplicates)
    write_json(args.report, {**result.metrics, **result.report, "near_duplicate_pairs_file": str(args.near_duplicates)})
    sizes, leakage = result.metrics["sizes"], result.metrics["leakage"]
    print("split: " + ", ".join(f"{n} {name}" for name, n in sizes.items())
          + f" (largest difference from the asked fractions: {result.metrics['fraction_difference']:.3f})")
    for name, missing in result.report["classes_missing"].items():
        if missing:
            print(f"  warning: no {name} image of {', '.join(missing)} (too few images, or one split.group holds "
                  f"the whole class); its {name} numbers cannot be measured")
    if leakage["near_duplicate_pairs"]:
        print(f"  {leakage['near_duplicate_pairs']} near-duplicate pairs of one class across splits (confirmed by "
              f"their pixels), listed in {args.near_duplicates}; split.group: near_duplicates keeps them together")
    if leakage["label_conflict_pairs"]:
        print(f"  {leakage['label_conflict_pairs']} near-duplicate pairs filed under two classes (one organism "
              f"labelled twice?), listed in {args.near_duplicates}: check their labels")
    return result.parts


if __name__ == "__main__":
    run_cli(main)
