"""The split stage's work: split (grouped as ``split.group`` asks), then check for leakage.

Whatever the grouping, near-duplicate candidates in different splits are listed with both
paths, their pixel similarity and whether it confirms them (plankton_transfer/data/leakage.py), and the realised fractions are set against the asked
ones (plankton_transfer/data/grouping.py), so a reader sees how far the test set can be trusted.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from plankton_transfer.data.grouping import (assign_grouped_splits, fraction_report, group_ids,
                                             groups_in_several_splits)
from plankton_transfer.data.leakage import cross_split, leakage_counts, near_duplicates
from plankton_transfer.data.splitting import parts_of, split_manifest
from plankton_transfer.errors import UserError
from plankton_transfer.params.split import SplitParams


@dataclasses.dataclass
class SplitResult:
    parts: dict[str, pd.DataFrame]
    near_duplicates: pd.DataFrame  # near-duplicate candidates across splits, both paths, confirmed or not
    report: dict  # grouping, asked against realised fractions, leakage counts
    metrics: dict  # numbers only, for `dvc metrics`


def split_and_check(manifest: pd.DataFrame, fractions: SplitParams, seed: int, load) -> SplitResult:
    """Split (grouped as ``split.group`` asks), then look for near-duplicates across the splits;
    ``load(path)`` opens a manifest path as an RGB image (to confirm hash candidates by their pixels)."""
    if "phash" not in manifest:
        raise UserError("the manifest has no phash column (perceptual hashes); re-run the filter stage (dvc repro)")
    manifest = manifest.reset_index(drop=True)
    pairs = near_duplicates(manifest, fractions.near_duplicate_distance, fractions.near_duplicate_similarity, load)
    groups, grouping = group_ids(manifest, fractions, pairs)
    manifest = manifest.assign(sample=sample_names(manifest, groups, grouping["mode"]))
    if groups is None:
        parts = split_manifest(manifest, fractions, seed)
    else:
        parts = parts_of(manifest.assign(group=groups), assign_grouped_splits(manifest, fractions, seed, groups))
    everything = pd.concat(parts.values(), ignore_index=True)
    across = cross_split(pairs, dict(zip(everything["path"].astype(str), everything["split"])))
    leakage = leakage_counts(across)
    fractions_seen = fraction_report(everything["split"], everything, fractions)
    grouping["groups_in_several_splits"] = groups_in_several_splits(
        everything["split"], None if groups is None else everything["group"])
    report = {"grouping": grouping, "fractions": fractions_seen, "classes_missing": classes_missing(parts),
              "near_duplicates": {"max_distance": fractions.near_duplicate_distance,
                                  "min_similarity": fractions.near_duplicate_similarity, **leakage}}
    metrics = {"sizes": {name: len(part) for name, part in parts.items()},
               "leakage": leakage, "fraction_difference": fractions_seen["largest_difference"]}
    return SplitResult(parts, across, report, metrics)


def sample_names(manifest: pd.DataFrame, groups: pd.Series | None, mode: str) -> pd.Series:
    """Each image's sample: the manifest's (EcoTaxa sample_id), else the group a ``split.group``
    pattern found in its path (an IFCB bin, a station), else empty (evaluate then cannot judge
    abundance per sample)."""
    sample = manifest["sample"].astype(str) if "sample" in manifest else pd.Series("", index=manifest.index)
    if mode == "regex":
        found = groups.where(groups != manifest["path"].astype(str), "")  # a path the pattern missed is its own group
        sample = sample.where(sample != "", found)
    return sample


def classes_missing(parts: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """For each split, the classes with no image in it (a class too small, or one group holding
    the whole class): its metrics on that split cannot be measured."""
    classes = sorted(set().union(*(set(part["class"]) for part in parts.values())))
    return {name: [c for c in classes if c not in set(part["class"])] for name, part in parts.items()}
