"""Classify new images with a trained model file (``plankton-predict``; not a pipeline stage).

    plankton-predict --model-file models/efficientnet_lite0.pt --images new/ --out predictions.csv

The model file names its backbone, weight file (with sha256) and preprocessing; the same
weight file is found again as in the extract stage and must have the recorded sha256.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from plankton_transfer.data.images import is_image_name
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import write_csv
from plankton_transfer.models.heads import load_model_file
from plankton_transfer.models.inference import classify
from plankton_transfer.params import ImageParams, PretrainedParams, params_argument, read_params, section


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="an image file or a folder (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"))
    params_argument(p)
    args = p.parse_args(argv)
    params = read_params(args.params)
    record = load_model_file(args.model_file)
    paths = [args.images] if args.images.is_file() else sorted(
        f for f in args.images.rglob("*") if f.is_file() and is_image_name(f.name) and not f.name.startswith("."))
    if not paths:
        raise UserError(f"no image files in {args.images}")
    table = classify(record, paths, section(PretrainedParams, params, "pretrained"),
                     section(ImageParams, params, "image"))
    write_csv(args.out, table)
    print(f"predict: {len(table)} images -> {args.out}")
    return table


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
