"""Choosing which validated images and classes the filter stage keeps.

- one copy of each image content (by sha256): the first in split order (train, val, test)
  then path order; the same content in two classes is a label conflict;
- class rules: include/exclude lists, a minimum count, a per-class cap.
"""
from __future__ import annotations

import collections

from plankton_transfer.data.images import ImageCheck
from plankton_transfer.data.scan import Candidate
from plankton_transfer.errors import UserError
from plankton_transfer.params.filter import FilterParams

SPLIT_ORDER = {"train": 0, "": 0, "val": 1, "test": 2}  # a duplicate is kept in the earliest split


def remove_duplicates(
    usable: list[tuple[Candidate, ImageCheck]], on_conflict: str
) -> tuple[list[tuple[Candidate, ImageCheck]], list[dict], list[dict]]:
    """Keep one copy of each image content; the same content in two classes is a conflict."""
    by_hash: dict[str, list[tuple[Candidate, ImageCheck]]] = collections.defaultdict(list)
    for item in usable:
        by_hash[item[1].sha256].append(item)
    unique, duplicates, conflicts = [], [], []
    for digest, group in by_hash.items():
        group.sort(key=lambda item: (SPLIT_ORDER[item[0].split], item[0].path))
        classes = sorted({c.label_name for c, _ in group})
        if len(classes) > 1:
            paths = [c.path for c, _ in group]
            if on_conflict == "error":
                raise UserError(
                    f"label conflict: the same image is filed as {' and '.join(classes)} ({', '.join(paths)}); "
                    "remove the wrong copy or set filter.label_conflicts=drop"
                )
            conflicts.append({"sha256": digest, "classes": classes, "paths": paths})
            continue
        first = group[0][0]
        unique.append(group[0])
        for cand, _ in group[1:]:
            entry = {"path": cand.path, "duplicate_of": first.path}
            if cand.split != first.split:
                entry["note"] = f"same image in {first.split} and {cand.split}: kept in {first.split} only"
            duplicates.append(entry)
    unique.sort(key=lambda item: item[0].path)
    return unique, duplicates, conflicts


def select_classes(
    unique: list[tuple[Candidate, ImageCheck]], class_folders: dict[str, int], cfg: FilterParams
) -> tuple[list[tuple[Candidate, ImageCheck]], dict[str, dict], dict[str, int]]:
    """Apply include/exclude, the minimum count and the per-class cap."""
    counts = collections.Counter(c.label_name for c, _ in unique)
    for name in cfg.include + cfg.exclude:
        if name not in class_folders:
            raise UserError(f"filter.include/exclude names '{name}', which is not a class folder; check the spelling")
    dropped: dict[str, dict] = {}
    for name, found in sorted(class_folders.items()):
        n = counts.get(name, 0)
        if found == 0:
            why = "empty folder (no image files)"
        elif n == 0:
            why = "no usable images after validation"
        elif cfg.include and name not in cfg.include:
            why = "not in filter.include"
        elif name in cfg.exclude:
            why = "in filter.exclude"
        elif n < cfg.min_images_per_class:
            why = f"{n} images < filter.min_images_per_class ({cfg.min_images_per_class})"
        else:
            continue
        dropped[name] = {"images": n, "reason": why}
    kept = [item for item in unique if item[0].label_name not in dropped]
    over_cap: dict[str, int] = {}
    if cfg.max_per_class is not None:
        kept, over_cap = cap_per_class(kept, cfg.max_per_class)
    return kept, dropped, over_cap


def cap_per_class(items: list[tuple[Candidate, ImageCheck]], cap: int) -> tuple[list, dict[str, int]]:
    """Keep at most ``cap`` images per class: the first by content hash, so the subset is
    reproducible and does not change when unrelated files are added."""
    by_class: dict[str, list] = collections.defaultdict(list)
    for item in items:
        by_class[item[0].label_name].append(item)
    kept, over = [], {}
    for name, group in by_class.items():
        group.sort(key=lambda item: item[1].sha256)
        kept.extend(group[:cap])
        if len(group) > cap:
            over[name] = len(group) - cap
    kept.sort(key=lambda item: item[0].path)
    return kept, over
