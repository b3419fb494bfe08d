"""Classify new images with a trained model (``plankton-predict``, ``make predict``; not a pipeline stage).

    plankton-predict --model efficientnet_lite0 --input new-images/ --out results/predictions.csv
    plankton-predict --model models/alexnet.pt --input cruise-42/ifcb/ --out results/cruise42.csv

--model:  a backbone name (its trained model file, models/<name>.pt) or a model file's path;
          it names its backbone, weight file (found again as in the extract stage and checked
          against the recorded sha256), preprocessing, head and per-class thresholds.
--input:  an image file or folder (searched recursively as in the filter stage), an unzipped
          EcoTaxa export (ecotaxa_*.tsv; labels ignored) or a folder of IFCB bins
          (.hdr/.adc/.roi), told apart automatically or by --input-type.
Writes:   the CSV (id, file, predicted class, probability, needs_review, threshold, the next
          classes with their probabilities, error) and beside it ecotaxa_<name>.tsv with the
          images it names in <name>_images/, ready to import into EcoTaxa.
Settings: extract.device/batch_size/workers and image.* and pretrained.dir from the params file
          when there is one (--device, --batch-size, --workers override them).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from plankton_transfer.data.predictions import check_output, output_paths, read_taxon_names, write_ecotaxa_results
from plankton_transfer.data.sources import KINDS, list_inputs, readable
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import write_csv
from plankton_transfer.models.heads import load_model_file
from plankton_transfer.models.inference import classify_items, load_predictor
from plankton_transfer.params import (PARAMS_FILE, ExtractParams, ImageParams, PretrainedParams, read_params,
                                      section)


def whole_number(least: int):
    """An argparse type: a whole number >= ``least`` (argparse turns the ValueError into one line)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is under {least}")
        return value
    parse.__name__ = f"whole number >= {least}"
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--model-file", dest="model", required=True, help="backbone name or model file")
    p.add_argument("--input", "--images", dest="input", type=Path, required=True)
    p.add_argument("--input-type", choices=["auto", *KINDS], default="auto")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="the CSV (the EcoTaxa table goes beside it)")
    p.add_argument("--top-k", type=whole_number(1), default=3, help="classes listed per image")
    p.add_argument("--taxon-names", type=Path, help="CSV with columns class,ecotaxa: EcoTaxa names for the classes")
    p.add_argument("--device", help="auto | cpu | cuda (default: extract.device)")
    p.add_argument("--batch-size", type=whole_number(1), help="default: extract.batch_size")
    p.add_argument("--workers", type=whole_number(-1), help="image decoding processes; default: extract.workers (-1 = auto)")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where backbone names are looked up")
    p.add_argument("--params", type=Path, help=f"params file (default: {PARAMS_FILE} when present)")
    return p.parse_args(argv)


def model_file(value: str, models_dir: Path) -> Path:
    """A model file path as given, or ``<models_dir>/<name>.pt`` for a backbone name."""
    path = Path(value)
    if path.is_file() or path.suffix in (".pt", ".pth") or "/" in value:  # a folder named like the backbone: a name
        return path
    named = models_dir / f"{value}.pt"
    if not named.exists():
        trained = sorted(p.stem for p in models_dir.glob("*.pt")) if models_dir.is_dir() else []
        raise UserError(f"no model file {named} for '{value}'; give a model file's path or a trained backbone "
                        f"({', '.join(trained) or f'none in {models_dir}: run dvc repro'})")
    return named


def settings(args: argparse.Namespace) -> tuple[ExtractParams, ImageParams, PretrainedParams]:
    params_file = args.params or (PARAMS_FILE if PARAMS_FILE.is_file() else None)
    try:
        params = read_params(params_file) if params_file else {}
        extract, image, pretrained = ((section(cls, params, name) if name in params else cls())
                                      for cls, name in ((ExtractParams, "extract"), (ImageParams, "image"),
                                                        (PretrainedParams, "pretrained")))
    except UserError as err:
        if args.params:
            raise
        raise UserError(f"{err} (read from {PARAMS_FILE} in the working folder: pass --params with your project's "
                        "params file, or run from another folder)") from None
    overrides = {k: v for k, v in (("device", args.device), ("batch_size", args.batch_size),
                                   ("workers", args.workers)) if v is not None}
    return dataclasses.replace(extract, **overrides), image, pretrained


def summary_lines(name: str, inputs, table: pd.DataFrame, seconds: float, device, files: list[str]) -> list[str]:
    failed = int((table["error"] != "").sum())
    done = len(table) - failed
    ignored = sum(inputs.ignored.values())
    details = ", ".join(f"{reason} {n}" for reason, n in sorted(inputs.ignored.items()) if n)
    lines = [f"predict {name} on {KINDS[inputs.kind]} {readable(str(inputs.root))}: {done} images classified, "
             f"{failed} failed{' (reasons in the error column)' if failed else ''}, "
             f"{ignored} ignored{f' ({details})' if details else ''}",
             f"  {int(table['needs_review'][table['error'] == ''].sum())} of {done} need review (under their class's "
             f"threshold); {done / seconds if seconds > 0 else 0:.1f} images/s on {device}",
             f"  -> {readable(', '.join(files))}"]
    return lines


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    extract_cfg, image_cfg, pretrained_cfg = settings(args)
    path = model_file(args.model, args.models_dir)
    check_output(args.out, args.input, path, args.taxon_names)
    record = load_model_file(path)
    taxon_names = read_taxon_names(args.taxon_names, record["classes"])
    if not record.get("thresholds"):
        print("note: this model file has no class thresholds (trained before they existed): every image is marked "
              "needs_review; re-run the train stage to get them", file=sys.stderr)
    inputs = list_inputs(args.input, args.input_type)
    if not inputs.items:
        raise UserError(f"no images in {args.input} ({KINDS[inputs.kind]}); nothing to classify")
    predictor = load_predictor(record, pretrained_cfg, extract_cfg)
    table, seconds = classify_items(predictor, inputs.items, image_cfg, extract_cfg.batch_size, extract_cfg.workers,
                                    args.top_k)
    write_csv(args.out, table)  # first: the classification is safe before anything else is written
    # the EcoTaxa table is written even with no rows, so an earlier run's table never stays beside this CSV
    tsv, count, problems = write_ecotaxa_results(table, inputs, args.out, taxon_names,
                                                 f"plankton-transfer {record['backbone']}")
    files = [str(args.out), str(tsv)] + ([f"{output_paths(args.out)[1]}/ ({count} images)"] if count else [])
    for problem in problems[:10]:
        print(f"warning: {tsv}: {problem}", file=sys.stderr)
    print("\n".join(summary_lines(record["backbone"], inputs, table, seconds, predictor.device, files)))
    return table


def run() -> None:
    run_cli(main)


if __name__ == "__main__":
    run()
