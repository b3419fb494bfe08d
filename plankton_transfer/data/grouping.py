"""Grouped splits: related images stay in one split (``split.group``).

Images from one sample, bin or cruise are correlated, and consecutive frames of one organism
are near-copies; split apart, they let the test set measure memory instead of recognition.
``split.group`` names what belongs together:

- ``near_duplicates``: clusters of images of one class linked by confirmed near-duplicate
  pairs (hash candidates whose pixels agree, plankton_transfer/data/leakage.py);
- a regular expression searched in each image's relative path, whose first capture group is
  the group id (an IFCB sample: ``(D\\d{8}T\\d{6}_IFCB\\d+)``); a path it does not match is a
  group of its own.

Whole groups are then placed greedily, largest first (ties in a seeded order), each into the
split where it brings the class counts closest (least squares) to the asked fractions: the
split is stratified as far as the groups allow and deterministic for a seed. How far the
realised fractions are from the asked ones is reported.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import regex

from plankton_transfer.data.split_files import SPLITS
from plankton_transfer.data.leakage import clusters, confirmed_same_class
from plankton_transfer.errors import UserError
from plankton_transfer.params.split import SplitParams, check_group_pattern



def group_ids(manifest: pd.DataFrame, cfg: SplitParams, pairs: pd.DataFrame) -> tuple[pd.Series | None, dict]:
    """Each row's group id (None for ``split.group: none``) and a summary for the report;
    ``pairs``: the manifest's near-duplicate candidates (leakage.near_duplicates)."""
    if cfg.group == "none":
        return None, {"mode": "none"}
    paths = manifest["path"].astype(str)
    if cfg.group == "near_duplicates":
        cluster = clusters(len(manifest), confirmed_same_class(pairs))
        sizes = np.bincount(cluster)
        ids = pd.Series([f"near-duplicates {c}" if sizes[c] > 1 else p for c, p in zip(cluster, paths)],
                        index=manifest.index)
        summary = {"mode": "near_duplicates", "near_duplicate_distance": cfg.near_duplicate_distance,
                   "near_duplicate_similarity": cfg.near_duplicate_similarity}
    else:
        check_group_pattern(cfg.group)
        matches = search_each(cfg.group, paths)
        if not any(m and m.group(1) for m in matches):
            raise UserError(f"split.group {cfg.group!r} matches no image path (e.g. {paths.iloc[0]!r}); fix the "
                            "pattern: its first capture group must find the group id in the relative path")
        ids = pd.Series([m.group(1) if m and m.group(1) else p for m, p in zip(matches, paths)], index=manifest.index)
        summary = {"mode": "regex", "pattern": cfg.group,
                   "unmatched_paths": sum(1 for m in matches if not (m and m.group(1)))}
    sizes = ids.value_counts()
    classes_per_group = manifest.groupby(ids)["class"].nunique()
    summary |= {"groups": int(len(sizes)), "grouped_images": int(sizes[sizes > 1].sum()),
                "largest_group": int(sizes.max()), "groups_with_several_classes": int((classes_per_group > 1).sum())}
    return ids, summary


PATTERN_SECONDS = 1.0  # one path's match may take this long; a pattern that backtracks catastrophically is refused


def search_each(pattern: str, paths: pd.Series) -> list:
    """The pattern searched in each path, with a time limit per path (the ``regex`` module's
    timeout; Python's ``re`` has none): a pattern such as ``((\\w+)*)\\.png`` can take minutes per
    path that does not match, and would hang the stage with no output."""
    compiled = regex.compile(pattern)
    matches = []
    for path in paths:
        try:
            matches.append(compiled.search(path, timeout=PATTERN_SECONDS))
        except TimeoutError:
            raise UserError(f"split.group {pattern!r} took over {PATTERN_SECONDS:g} s on one path ({path!r}): it "
                            "backtracks catastrophically (a repetition inside a repetition, such as (\\w+)*); write it "
                            "without nested repetition, e.g. '(D\\d{8}T\\d{6}_IFCB\\d+)'") from None
    return matches


def group_order_key(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_grouped_splits(manifest: pd.DataFrame, fractions: SplitParams, seed: int, groups: pd.Series) -> pd.Series:
    """The split of every row, whole groups at a time; rows that already have a split keep it
    (as plankton_transfer/data/splitting.py: only missing val/test splits are carved from train)."""
    split = manifest["split"].fillna("").astype(str).copy()
    missing = [s for s in ("val", "test") if not (split == s).any()]
    pool = split.isin(["", "train"])
    rows = manifest[pool]
    classes = sorted(rows["class"].unique())
    n_c = rows["class"].value_counts().reindex(classes).to_numpy(dtype=float)
    target = {s: getattr(fractions, s) * n_c for s in missing}
    target["train"] = n_c - sum(target.values(), np.zeros(len(classes)))
    choices = ["train", *missing]
    counts = {s: np.zeros(len(classes)) for s in choices}
    by_group = pd.crosstab(groups[pool], rows["class"]).reindex(columns=classes, fill_value=0)
    order = sorted(by_group.index, key=lambda g: (-int(by_group.loc[g].sum()), group_order_key(seed, str(g))))
    place = {}
    for group in order:
        g = by_group.loc[group].to_numpy(dtype=float)
        cost = {s: float((g * (2 * (counts[s] - target[s]) + g)).sum()) for s in choices}
        best = min(choices, key=lambda s: (cost[s], choices.index(s)))
        counts[best] += g
        place[group] = best
    split[pool] = groups[pool].map(place)
    empty = [s for s in choices if not (split == s).any()]
    if empty:
        raise UserError(f"split.group left the {' and '.join(empty)} split empty ({len(order)} groups); use a pattern "
                        "that makes smaller groups, or split.group: none")
    return split


def fraction_report(split: pd.Series, manifest: pd.DataFrame, fractions: SplitParams) -> dict:
    """Asked against realised fractions, overall and per class, and the largest differences."""
    asked = {s: getattr(fractions, s) for s in SPLITS}
    realised = {s: round(float((split == s).mean()), 4) for s in SPLITS}
    per_class = {}
    for name, rows in split.groupby(manifest["class"], sort=True):
        per_class[str(name)] = {s: round(float((rows == s).mean()), 4) for s in SPLITS}
    class_gap = max((abs(v[s] - asked[s]) for v in per_class.values() for s in SPLITS), default=0.0)
    return {"asked": asked, "realised": realised,
            "largest_difference": round(max(abs(realised[s] - asked[s]) for s in SPLITS), 4),
            "largest_class_difference": round(class_gap, 4), "per_class": per_class}


def groups_in_several_splits(split: pd.Series, groups: pd.Series | None) -> int:
    """Groups whose images sit in more than one split (only a dataset's own split folders can cause it)."""
    if groups is None:
        return 0
    return int((split.groupby(groups).nunique() > 1).sum())
