"""Stage extract@<model>: run the frozen backbone once over every image of every split.

Inputs:  ``--split-dir``/{train,val,test}.csv; the images under ``data.raw`` (read from the
         params file, or ``--raw``); the backbone's weight file from
         ``<pretrained.dir>/<model>/`` or a pinned pip package (never the network).
Outputs: ``--out-dir``: float16 features with labels per split, and meta.json
         (models/provenance.py: FeatureMeta: backbone, weight source, sha256 and check, input
         recipe, classes, the split's fingerprint, images/s).
Params:  ``extract``, ``image``, ``pretrained``, ``base.seed`` (library: plankton_transfer/models/extraction.py).

With ``PLANKTON_LAUNCHER=torchrun`` or ``slurm`` (plankton_transfer/settings.py), this command
starts itself again under torchrun, one process per GPU (``PLANKTON_NPROC``), on this node or
every node of the Slurm job, and waits (plankton_transfer/launch.py); the output is the same
folder, row for row. Run directly under torchrun, it takes its rank's share.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plankton_transfer.data.split_files import read_splits
from plankton_transfer.errors import run_cli
from plankton_transfer.launch import requested_launch, run_workers
from plankton_transfer.models.extraction import run_extraction
from plankton_transfer.models.provenance import FeatureMeta, load_meta
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.data import DataParams
from plankton_transfer.params.extract import ExtractParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.settings import run_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="backbone name (a module of plankton_transfer/models/backbones/)")
    p.add_argument("--raw", type=Path, help="image folder (default: data.raw from the params file)")
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--out-dir", type=Path, required=True)
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> FeatureMeta | None:
    args = parse_args(argv)
    params = read_params(args.params)
    raw = args.raw or Path(section(DataParams, params, "data").raw)
    cfg, settings = section(ExtractParams, params, "extract"), run_settings()
    launch = requested_launch(settings)
    if launch.relaunch:  # rank 0 of the workers prints the summary
        run_workers(launch, "stages.extract", sys.argv[1:] if argv is None else list(argv), args.out_dir)
        return load_meta(args.out_dir)
    meta = run_extraction(
        args.model, raw, read_splits(args.split_dir), args.out_dir, cfg, section(ImageParams, params, "image"),
        section(PretrainedParams, params, "pretrained"), section(BaseParams, params, "base").seed, settings,
    )
    if meta is None:  # a rank other than 0 under torchrun: rank 0 reports
        return None
    print(f"extract {args.model}: {sum(meta.sizes.values())} images, {meta.feature_dim}-d features, "
          f"{meta.images_per_s} images/s, weights: {meta.weights.description}")
    return meta


if __name__ == "__main__":
    run_cli(main)
