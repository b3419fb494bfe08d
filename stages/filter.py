"""Stage filter: find, validate and select the images and classes to use.

Inputs:  the image folder ``--raw`` (params ``data.raw``; see stages/scan.py for layouts).
Outputs: ``--manifest`` CSV (path, class, label, split, sha256, width, height, format, converted);
         ``--report`` JSON: every file not kept, with its reason, and every converted file;
         ``--metrics`` JSON: counts for ``dvc metrics``.
Cache:   ``--cache-file`` remembers each file's hash and verdict by (path, size, mtime, inode),
         so a re-run over an unchanged million-file folder does not re-read every file.
Params:  ``filter`` (class selection, strictness), ``image`` (validation limits).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
from pathlib import Path

import pandas as pd

from stages.common import UserError, check_choice, read_params, run_cli, section, write_csv, write_json
from stages.images import ImageCheck, ImageConfig
from stages.scan import Candidate, Scan, scan_dataset
from stages.selection import remove_duplicates, select_classes
from stages.validation import validate_files

# format and converted tell the extract stage which files GPU JPEG decoding can take as they are
MANIFEST_COLUMNS = ["path", "class", "label", "split", "sha256", "width", "height", "format", "converted"]


@dataclasses.dataclass(frozen=True)
class FilterParams:
    min_images_per_class: int = 1000  # the study kept the 17 of 43 classes with >= 1000 images
    include: tuple[str, ...] = ()  # if given, only these classes
    exclude: tuple[str, ...] = ()
    max_per_class: int | None = None  # cap per class (a reproducible subset, chosen by content hash)
    strict: bool = False  # true: any rejected file fails the run
    label_conflicts: str = "drop"  # same image in two classes: drop all copies, or error
    workers: int = 0  # validation processes; 0 = one per CPU core

    def __post_init__(self) -> None:
        check_choice("filter.label_conflicts", self.label_conflicts, ("drop", "error"))
        object.__setattr__(self, "include", tuple(self.include or ()))
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        if self.max_per_class is not None and self.max_per_class < 1:
            raise UserError("params.yaml: filter.max_per_class must be null or a positive number")


@dataclasses.dataclass
class FilterResult:
    manifest: pd.DataFrame
    report: dict


def filter_dataset(raw: Path, cfg: FilterParams, image_cfg: ImageConfig, cache_file: Path | None = None) -> FilterResult:
    """Scan ``raw``, validate every candidate, drop duplicates and conflicts, select classes."""
    scan = scan_dataset(raw)
    checks = validate_files(raw, [c.path for c in scan.candidates], image_cfg, cache_file, cfg.workers)
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
         bool(chk.conversions))
        for c, chk in kept
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def build_report(raw, scan: Scan, checks, duplicates, conflicts, manifest, dropped_classes, over_cap) -> dict:
    rejected = [{"path": p, "reason": chk.reason} for p, chk in sorted(checks.items()) if not chk.ok]
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
    return {
        "source": str(raw),
        "layout": scan.layout,
        "files_seen": scan.files_seen,
        "summary": summary,
        "classes": {
            "kept": manifest["class"].value_counts().sort_index().to_dict(),
            "dropped": dropped_classes,
            "over_cap": over_cap,
        },
        "rejected": {"count_by_reason": count_by(checks[r["path"]].kind for r in rejected), "files": rejected},
        "converted": {
            "count_by_conversion": count_by(conv.split(" ")[0] for c in converted for conv in c["conversions"]),
            "files": converted,
        },
        "ignored": {"count_by_reason": count_by_weighted(scan.ignored), "entries": scan.ignored},
        "duplicates": duplicates,
        "label_conflicts": conflicts,
    }


def count_by(keys) -> dict[str, int]:
    return dict(sorted(collections.Counter(keys).items()))


def count_by_weighted(entries: list[dict]) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for entry in entries:
        counts[entry["reason"]] += entry["files"]
    return dict(sorted(counts.items()))


def summary_metrics(result: FilterResult) -> dict:
    summary = result.report["summary"]
    return {
        "classes": len(result.report["classes"]["kept"]),
        "images": summary["kept"],
        "rejected": summary["rejected"],
        "duplicates": summary["duplicates"],
        "label_conflicts": summary["label_conflicts"],
        "ignored": summary["ignored"],
    }


def print_summary(result: FilterResult, report_path: Path) -> None:
    r = result.report
    print(f"filter: {r['files_seen']} files in {r['source']} ({r['layout']}): {r['summary']['kept']} images kept "
          f"in {len(r['classes']['kept'])} classes")
    for key, n in r["summary"].items():
        if key != "kept" and n:
            print(f"  {n:>7} {key.replace('_', ' ')}")
    for name, info in r["classes"]["dropped"].items():
        print(f"  class '{name}' dropped: {info['reason']}")
    if r["summary"]["rejected"] or r["converted"]["files"]:
        print(f"  details (every rejected or converted file, with its reason): {report_path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--raw", type=Path, required=True, help="image folder (params: data.raw)")
    p.add_argument("--manifest", type=Path, default=Path("data/filtered/manifest.csv"))
    p.add_argument("--report", type=Path, default=Path("data/filtered/report.json"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/filter.json"))
    p.add_argument("--cache-file", type=Path, default=Path(".cache/filter-validation.csv"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> FilterResult:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, image_cfg = section(FilterParams, params, "filter"), section(ImageConfig, params, "image")
    result = filter_dataset(args.raw, cfg, image_cfg, args.cache_file)
    write_json(args.report, result.report)
    print_summary(result, args.report)
    if cfg.strict and result.report["summary"]["rejected"]:
        raise UserError(
            f"{result.report['summary']['rejected']} files rejected (listed in {args.report}); "
            "fix or remove them, or set filter.strict=false to leave them out"
        )
    if result.manifest.empty:
        raise UserError(f"no class kept in {args.raw}; see {args.report} and lower filter.min_images_per_class")
    write_csv(args.manifest, result.manifest)
    write_json(args.metrics, {"data": summary_metrics(result)})
    return result


if __name__ == "__main__":
    run_cli(main)
