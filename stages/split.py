"""Stage split: stratified, deterministic train/val/test manifests.

Inputs:  ``--manifest`` from the filter stage.
Outputs: ``--out-dir``/{train,val,test}.csv (the manifest's columns), ``--metrics`` JSON with
         the split sizes.
Params:  ``split`` (fractions), ``base.seed``.

Each class is shuffled on its own, with a generator seeded from ``base.seed`` and the class
name, after sorting its images by content hash: the split does not depend on file order,
and adding a class leaves the other classes' splits unchanged. A dataset that came with
split folders keeps them; a missing val or test split is carved out of train.
Content hashes are unique after the filter stage, so no image is in two splits.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import BaseParams, UserError, read_params, run_cli, section, write_csv, write_json

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise UserError(
                f"params.yaml: split fractions must be > 0 and sum to 1 (got train={self.train}, "
                f"val={self.val}, test={self.test})"
            )


def class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends on the seed and the class name only."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def split_counts(n: int, fractions: SplitParams) -> tuple[int, int, int]:
    """Rounded (train, val, test) sizes; every split gets an image when there are three."""
    n_val, n_test = round(n * fractions.val), round(n * fractions.test)
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_val, n_test = min(n_val, n), min(n_test, n - min(n_val, n))
    return n - n_val - n_test, n_val, n_test


def assign_splits(manifest: pd.DataFrame, fractions: SplitParams, seed: int) -> pd.Series:
    """Return the split of every row; rows that already have one keep it."""
    split = manifest["split"].fillna("").astype(str).copy()
    missing = [s for s in ("val", "test") if not (split == s).any()]
    if (split == "").all():
        missing = list(SPLITS)
    pool = split.isin(["", "train"])
    for name, rows in manifest[pool].groupby("class", sort=True):
        order = rows.sort_values("sha256").index.to_numpy()
        order = order[class_rng(seed, str(name)).permutation(len(order))]
        sizes = dict(zip(SPLITS, split_counts(len(order), fractions)))
        start = 0
        for s in ("val", "test"):
            if s in missing:
                split[order[start:start + sizes[s]]] = s
                start += sizes[s]
        split[order[start:]] = "train"
    return split


def split_manifest(manifest: pd.DataFrame, fractions: SplitParams, seed: int) -> dict[str, pd.DataFrame]:
    manifest = manifest.reset_index(drop=True)  # assign_splits addresses rows by index label
    split = assign_splits(manifest, fractions, seed)
    parts = {s: manifest[split == s].assign(split=s).reset_index(drop=True) for s in SPLITS}
    for s, part in parts.items():
        if part.empty:
            raise UserError(f"the {s} split is empty; add images or change the split fractions in params.yaml")
    hashes = [set(p["sha256"]) for p in parts.values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2]), "image content in two splits"
    return parts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("data/filtered/manifest.csv"))
    p.add_argument("--out-dir", type=Path, default=Path("data/split"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/split.json"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    args = parse_args(argv)
    params = read_params(args.params)
    fractions, seed = section(SplitParams, params, "split"), section(BaseParams, params, "base").seed
    if not args.manifest.is_file():
        raise UserError(f"{args.manifest} not found; run the filter stage first (dvc repro)")
    manifest = pd.read_csv(args.manifest, dtype={"split": str}, keep_default_na=False)
    parts = split_manifest(manifest, fractions, seed)
    for name, part in parts.items():
        write_csv(args.out_dir / f"{name}.csv", part)
    sizes = {name: len(part) for name, part in parts.items()}
    write_json(args.metrics, {"sizes": sizes})
    print("split: " + ", ".join(f"{n} {name}" for name, n in sizes.items()))
    return parts


if __name__ == "__main__":
    run_cli(main)
