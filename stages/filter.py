"""Stage filter: find, validate and select the images and classes to use.

Inputs:  the image folder ``data.raw`` from params.yaml (or ``--raw``; it is read from the
         params file so that any folder name works, spaces, quotes and ``$`` included): class
         folders, or an unzipped EcoTaxa export (``ecotaxa_*.tsv``; read by data/ecotaxa.py).
Outputs: ``--manifest`` CSV (path, class, label, split, sha256, width, height, format, converted,
         phash: the perceptual hash the split stage compares to find near-duplicates);
         ``--report`` JSON: every file not kept, with its reason, and every converted file;
         ``--metrics`` JSON: counts for ``dvc metrics``.
Cache:   ``--cache-file`` remembers each file's hash and verdict by (path, size, mtime, inode),
         so a re-run over an unchanged million-file folder does not re-read every file.
Params:  ``data``, ``filter``, ``image``, ``ecotaxa``; ``models`` is checked here against the
         backbone registry (which imports no torch), so a bad backbone list stops the pipeline
         before any work (library: plankton_transfer/data/filtering.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.filtering import filter_dataset, filter_metrics, require_two_classes, summary_lines
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import write_csv, write_json
from plankton_transfer.models.backbones import check_registered
from plankton_transfer.params import (DataParams, EcotaxaParams, FilterParams, ImageParams, check_model_names,
                                      params_argument, read_params, section)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--raw", type=Path, help="image folder (default: data.raw from the params file)")
    p.add_argument("--manifest", type=Path, default=Path("data/filtered/manifest.csv"))
    p.add_argument("--report", type=Path, default=Path("data/filtered/report.json"))
    p.add_argument("--metrics", type=Path, default=Path("metrics/filter.json"))
    p.add_argument("--cache-file", type=Path, default=Path(".cache/filter-validation.csv"))
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    params = read_params(args.params)
    if "models" in params:
        check_registered(check_model_names(params["models"]))
    cfg, image_cfg = section(FilterParams, params, "filter"), section(ImageParams, params, "image")
    raw = args.raw or Path(section(DataParams, params, "data").raw)
    result = filter_dataset(raw, cfg, image_cfg, args.cache_file, section(EcotaxaParams, params, "ecotaxa"))
    write_json(args.report, result.report)
    print("\n".join(summary_lines(result, args.report)))
    if cfg.strict and result.report["summary"]["rejected"]:
        raise UserError(
            f"{result.report['summary']['rejected']} files rejected (listed in {args.report}); "
            "fix or remove them, or set filter.strict=false to leave them out"
        )
    require_two_classes(result, cfg, args.report)
    write_csv(args.manifest, result.manifest)
    write_json(args.metrics, {"data": filter_metrics(result)})
    return result


if __name__ == "__main__":
    run_cli(main)
