"""Stage split: stratified, deterministic train/val/test manifests.

Inputs:  ``--manifest`` from the filter stage.
Outputs: ``--out-dir``/{train,val,test}.csv (the manifest's columns), ``--metrics`` JSON with
         the split sizes.
Params:  ``split`` (fractions), ``base.seed`` (library: plankton_transfer/data/splitting.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.splitting import read_manifest, split_manifest
from plankton_transfer.errors import run_cli
from plankton_transfer.files import write_csv, write_json
from plankton_transfer.params import BaseParams, SplitParams, params_argument, read_params, section


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("data/filtered/manifest.csv"))
    p.add_argument("--out-dir", type=Path, default=Path("data/split"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/split.json"))
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    params = read_params(args.params)
    fractions, seed = section(SplitParams, params, "split"), section(BaseParams, params, "base").seed
    parts = split_manifest(read_manifest(args.manifest), fractions, seed)
    for name, part in parts.items():
        write_csv(args.out_dir / f"{name}.csv", part)
    sizes = {name: len(part) for name, part in parts.items()}
    write_json(args.metrics, {"sizes": sizes})
    print("split: " + ", ".join(f"{n} {name}" for name, n in sizes.items()))
    return parts


if __name__ == "__main__":
    run_cli(main)
