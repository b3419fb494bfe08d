"""Stage filter: find, validate and select the images and classes to use.

Inputs:  the image folder ``data.raw`` from params.yaml (or ``--raw``; it is read from the
         params file so that any folder name works, spaces, quotes and ``$`` included): class
         folders, or an unzipped EcoTaxa export (``ecotaxa_*.tsv``): data/sources.py.
Outputs: ``--manifest`` CSV (path, class, label, split, sha256, width, height, format, converted,
         phash: the perceptual hash the split stage compares to find near-duplicates);
         ``--report`` JSON (data/filtering.py: FilterReport): every file not kept, with its
         reason, every converted file, and the counts (kept, rejected, duplicates, ...).
Cache:   ``--cache-file`` remembers each file's hash and verdict by (path, size, mtime, inode),
         so a re-run over an unchanged million-file folder does not re-read every file.
Params:  ``data``, ``filter``, ``image``, ``ecotaxa``. As the pipeline's first stage it also
         checks the ``models`` list against the backbone registry (which imports no torch), so a
         bad backbone name stops a run before any work (library: plankton_transfer/data/filtering.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.filtering import FilterResult, filter_dataset, require_two_classes, summary_lines
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import write_csv
from plankton_transfer.models.backbones import check_registered
from plankton_transfer.params.core import named_source, params_argument, read_params, section
from plankton_transfer.params.data import DataParams
from plankton_transfer.params.ecotaxa import EcotaxaParams
from plankton_transfer.params.filter import FilterParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.settings import run_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, help="image folder (default: data.raw from the params file)")
    p.add_argument("--manifest", type=Path, default=Path("data/filtered/manifest.csv"))
    p.add_argument("--report", type=Path, default=Path("data/filtered/report.json"))
    p.add_argument("--cache-file", type=Path, default=Path(".cache/filter-validation.csv"))
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> FilterResult:
    args = parse_args(argv)
    params = read_params(args.params)  # every section checked
    if "models" in params:
        check_registered(params["models"])
    cfg, image_cfg = section(FilterParams, params, "filter"), section(ImageParams, params, "image")
    raw = args.raw or Path(section(DataParams, params, "data").raw)
    with named_source(params):  # a message about a setting names the params file it came from
        result = filter_dataset(raw, cfg, image_cfg, args.cache_file, section(EcotaxaParams, params, "ecotaxa"),
                                run_settings().workers)
    result.report.save_json(args.report)
    print("\n".join(summary_lines(result, args.report)))
    rejected = result.report.summary["rejected"]
    if cfg.strict and rejected:
        raise UserError(f"{rejected} files rejected (listed in {args.report}); fix or remove them, or set "
                        "filter.strict=false to leave them out")
    require_two_classes(result, cfg, args.report)
    write_csv(args.manifest, result.manifest)
    return result


if __name__ == "__main__":
    run_cli(main)
