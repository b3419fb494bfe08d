"""The filter stage's work: find, validate and select the images and classes to use.

Every file below the image folder ends up in exactly one count of the report (kept,
ignored, rejected, duplicate, label conflict, dropped class, over the class cap).
"""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from plankton_transfer.data.images import ImageCheck
from plankton_transfer.data.scan import Candidate, Scan, display_path
from plankton_transfer.data.selection import remove_duplicates, select_classes
from plankton_transfer.data.sources import labelled_scan
from plankton_transfer.data.validation import validate_files
from plankton_transfer.errors import UserError
from plankton_transfer.records import Record
from plankton_transfer.params.ecotaxa import EcotaxaParams
from plankton_transfer.params.filter import FilterParams
from plankton_transfer.params.image import ImageParams

# format and converted tell the extract stage which files GPU JPEG decoding can take as they are;
# phash (perceptual hash) lets the split stage find near-duplicates (plankton_transfer/data/leakage.py);
# sample (EcoTaxa sample_id, else empty) lets evaluate judge abundance per sample
MANIFEST_COLUMNS = ["path", "class", "label", "split", "sha256", "width", "height", "format", "converted", "phash",
                    "sample"]


@dataclasses.dataclass(frozen=True)
class FilterReport(Record):
    """``data/filtered/report.json``: where every file below data.raw went, and why."""

    FORMAT = "plankton-transfer/filter-report"
    VERSION = 1
    REMAKE = "run dvc repro (the filter stage writes it again)"

    source: str
    layout: str
    files_seen: int
    summary: dict[str, int]  # kept, ignored, rejected, duplicates, label_conflicts, in_dropped_classes, over_class_cap
    classes: dict[str, Any]  # kept {class: n}, dropped {class: {images, reason}}, over_cap {class: n}
    rejected: dict[str, Any]  # count_by_reason, files [{path, reason}]
    converted: dict[str, Any]  # count_by_conversion, files [{path, conversions}]
    ignored: dict[str, Any]  # count_by_reason, entries [{path, reason, files}]
    duplicates: list[dict]
    label_conflicts: list[dict]


@dataclasses.dataclass
class FilterResult:
    manifest: pd.DataFrame
    report: FilterReport


def filter_dataset(raw: Path, cfg: FilterParams, image_cfg: ImageParams, cache_file: Path | None = None,
                   ecotaxa_cfg: EcotaxaParams | None = None, workers: int = -1) -> FilterResult:
    """Scan ``raw`` (class folders or an EcoTaxa export: data/sources.py), validate every
    candidate (``workers`` processes, -1: one per usable core), drop duplicates and conflicts,
    select classes."""
    scan = labelled_scan(raw, ecotaxa_cfg or EcotaxaParams())
    checks = validate_files(raw, [c.path for c in scan.candidates], image_cfg, cache_file, workers)
    usable = [(c, checks[c.path]) for c in scan.candidates if checks[c.path].ok]
    unique, duplicates, conflicts = remove_duplicates(usable, cfg.label_conflicts)
    kept, dropped_classes, over_cap = select_classes(unique, scan.class_folders, cfg)
    manifest = build_manifest(kept)
    report = build_report(raw, scan, checks, duplicates, conflicts, manifest, dropped_classes, over_cap)
    return FilterResult(manifest=manifest, report=report)


def build_manifest(kept: list[tuple[Candidate, ImageCheck]]) -> pd.DataFrame:
    classes = sorted({c.label_name for c, _ in kept})
    label_of = {name: i for i, name in enumerate(classes)}
    rows = [
        (c.path, c.label_name, label_of[c.label_name], c.split, chk.sha256, chk.width, chk.height, chk.format,
         bool(chk.conversions), chk.phash, c.sample)
        for c, chk in kept
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def build_report(raw, scan: Scan, checks, duplicates, conflicts, manifest, dropped_classes, over_cap) -> FilterReport:
    rejected = [{"path": p, "reason": chk.reason, "kind": chk.kind} for p, chk in checks.items() if not chk.ok]
    rejected = sorted(rejected + scan.rejected, key=lambda r: r["path"])  # + names that are not UTF-8
    converted = [{"path": p, "conversions": list(chk.conversions)} for p, chk in sorted(checks.items()) if chk.conversions]
    summary = {
        "kept": len(manifest),
        "ignored": sum(e["files"] for e in scan.ignored),
        "rejected": len(rejected),
        "duplicates": len(duplicates),
        "label_conflicts": sum(len(c["paths"]) for c in conflicts),
        "in_dropped_classes": sum(d["images"] for d in dropped_classes.values()),
        "over_class_cap": sum(over_cap.values()),
    }
    assert sum(summary.values()) == scan.files_seen, f"file accounting broken: {summary} != {scan.files_seen} files"
    return FilterReport(
        source=display_path(raw),
        layout=scan.layout,
        files_seen=scan.files_seen,
        summary=summary,
        classes={"kept": {str(k): int(v) for k, v in manifest["class"].value_counts().sort_index().items()},
                 "dropped": dropped_classes, "over_cap": over_cap},
        rejected={"count_by_reason": count_by(r["kind"] for r in rejected),
                  "files": [{"path": r["path"], "reason": r["reason"]} for r in rejected]},
        converted={"count_by_conversion": count_by(conv.split(" ")[0] for c in converted for conv in c["conversions"]),
                   "files": converted},
        ignored={"count_by_reason": count_by_weighted(scan.ignored), "entries": scan.ignored},
        duplicates=duplicates,
        label_conflicts=conflicts,
    )


def count_by(keys) -> dict[str, int]:
    return dict(sorted(collections.Counter(keys).items()))


def count_by_weighted(entries: list[dict]) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for entry in entries:
        counts[entry["reason"]] += entry["files"]
    return dict(sorted(counts.items()))


def filter_metrics(result: FilterResult) -> dict:
    """The counts ``dvc metrics`` shows for the filter stage."""
    summary = result.report.summary
    return {
        "classes": len(result.report.classes["kept"]),
        "images": summary["kept"],
        "rejected": summary["rejected"],
        "duplicates": summary["duplicates"],
        "label_conflicts": summary["label_conflicts"],
        "ignored": summary["ignored"],
    }


def require_two_classes(result: FilterResult, cfg: FilterParams, report_path: Path) -> None:
    """Stop, naming what was kept, the threshold and a fix that can help, when fewer than two
    classes are left: a one-class 'classifier' would run every later stage only to fail in
    evaluation."""
    r = result.report
    kept = r.classes["kept"]
    if len(kept) >= 2:
        return
    threshold = f"filter.min_images_per_class={cfg.min_images_per_class}"
    if kept:
        (name, count), = kept.items()
        what = f"only one class kept in {r.source}, '{name}' ({count} images, {threshold}); a classifier needs two or more"
    else:
        what = f"no class kept in {r.source} ({r.files_seen} files seen, {threshold})"
    raise UserError(f"{what}: {' or '.join(fixes_for_few_classes(r))}; details in {report_path}")


def fixes_for_few_classes(r: FilterReport) -> list[str]:
    """Only the fixes that can change the outcome: lowering the threshold helps only when a
    class was dropped for being under it (not for an empty folder or label conflicts)."""
    dropped, summary = r.classes["dropped"], r.summary
    small = {name: d["images"] for name, d in dropped.items() if "filter.min_images_per_class" in d["reason"]}
    fixes = []
    if small:
        largest = max(small, key=lambda name: (small[name], name))
        fixes.append(f"lower filter.min_images_per_class (the largest dropped class, '{largest}', has "
                     f"{small[largest]} usable images)")
    if any(d["reason"] in ("not in filter.include", "in filter.exclude") for d in dropped.values()):
        fixes.append("name more classes in filter.include or fewer in filter.exclude")
    if summary["label_conflicts"]:
        fixes.append(f"file each of the {summary['label_conflicts']} images in label conflicts in one class only")
    if summary["rejected"]:
        fixes.append(f"fix or replace the {summary['rejected']} rejected files")
    if not fixes:
        fixes.append("add a sub-folder of images for each class (or train/ val/ test/ folders of them) to data.raw")
    return fixes


def summary_lines(result: FilterResult, report_path: Path) -> list[str]:
    """What the stage prints: totals, each non-zero count, each dropped class."""
    r = result.report
    lines = [f"filter: {r.files_seen} files in {r.source} ({r.layout}): {r.summary['kept']} images kept "
             f"in {len(r.classes['kept'])} classes"]
    lines += [f"  {n:>7} {key.replace('_', ' ')}" for key, n in r.summary.items() if key != "kept" and n]
    lines += [f"  class '{name}' dropped: {info['reason']}" for name, info in r.classes["dropped"].items()]
    if r.summary["rejected"] or r.converted["files"]:
        lines.append(f"  details (every rejected or converted file, with its reason): {report_path}")
    return lines
