"""Stratified, deterministic train/val/test splits of a manifest.

Each class is shuffled on its own, with a generator seeded from ``base.seed`` and the class
name, after sorting its images by content hash: the split does not depend on file order,
and adding a class leaves the other classes' splits unchanged. A dataset that came with
split folders keeps them; a missing val or test split is carved out of train.
Content hashes are unique after the filter stage, so no image is in two splits.

With ``split.group`` whole groups of related images are placed instead
(plankton_transfer/data/grouping.py), and near-duplicates in different splits are reported
(plankton_transfer/data/split_checks.py).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from plankton_transfer.data.split_files import SPLITS
from plankton_transfer.errors import UserError
from plankton_transfer.params.split import SplitParams


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
    """The three splits, each with the manifest's columns plus an empty ``group``."""
    manifest = manifest.reset_index(drop=True)  # assign_splits addresses rows by index label
    return parts_of(manifest.assign(group=""), assign_splits(manifest, fractions, seed))


def parts_of(manifest: pd.DataFrame, split: pd.Series) -> dict[str, pd.DataFrame]:
    """The rows of each split, checked: no split empty, no image content in two splits."""
    parts = {s: manifest[split == s].assign(split=s).reset_index(drop=True) for s in SPLITS}
    for s, part in parts.items():
        if part.empty:
            raise UserError(f"the {s} split is empty; add images or change the split fractions in params.yaml")
    hashes = [set(p["sha256"]) for p in parts.values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2]), "image content in two splits"
    return parts
