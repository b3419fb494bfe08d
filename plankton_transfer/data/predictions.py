"""Writing prediction results: the CSV, and beside it an EcoTaxa-importable table with its images.

For ``--out results/predictions.csv``:
- ``results/predictions.csv``: one row per image or ROI (data/sources.py, models/inference.py);
- ``results/ecotaxa_predictions.tsv``: the classified images as EcoTaxa objects, status
  ``predicted``, with the probability in ``object_classif_score`` and ``object_needs_review``;
- ``results/predictions_images/``: the images the table names (``img_file_name`` is relative to
  the table): image files hard-linked where the file system allows, else copied; IFCB ROIs
  written as PNG files (``<bin>/<roi id>.png``). Files there are replaced one by one, so an
  earlier run's folder can be reused; nothing is deleted. Zip the table with this folder to
  import it into EcoTaxa.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from plankton_transfer.data.ecotaxa import read_name_mapping
from plankton_transfer.data.ecotaxa_tsv import clean_cell, validate_ecotaxa_tsv, write_ecotaxa_tsv
from plankton_transfer.data.sources import Inputs, Item, roi_pixels
from plankton_transfer.errors import UserError

TSV_COLUMNS = {"img_file_name": "[t]", "img_rank": "[f]", "object_id": "[t]", "object_annotation_status": "[t]",
               "object_annotation_category": "[t]", "object_classif_score": "[f]", "object_needs_review": "[f]",
               "sample_id": "[t]", "process_classifier": "[t]"}


def output_paths(out: Path) -> tuple[Path, Path]:
    """The EcoTaxa table and its images folder for the CSV ``out``."""
    return out.with_name(f"ecotaxa_{out.stem}.tsv"), out.with_name(f"{out.stem}_images")


def check_output(out: Path, input_path: Path, *read: Path | None) -> None:
    """Refuse, before any work, an output that is a folder, lies inside the input folder, is one of
    the files the run reads (``input_path``, ``read``: model file, --taxon-names) or an existing
    file that is not a CSV (an image, a model, params.yaml: never overwritten by a mistyped --out)."""
    tsv, images = output_paths(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name for the results, e.g. {out / 'predictions.csv'} "
                        "(nothing was changed)")
    for path in (input_path, *read):
        if path is not None and path.is_file() and out.exists() and out.samefile(path):
            raise UserError(f"--out {out} is the file {path} that this run reads; give a new file name for the "
                            "results (nothing was changed)")
    if out.exists() and out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} exists and is not a .csv file; results are only written over an earlier "
                        "results CSV: give a new name ending in .csv (nothing was changed)")
    if input_path.is_dir() and out.resolve().is_relative_to(input_path.resolve()):
        raise UserError(f"--out {out} lies inside the input folder {input_path}; write the results elsewhere "
                        "(nothing was changed)")
    for path, what in ((tsv, "a file"), (images, "a folder")):
        if path.exists() and path.is_dir() != (what == "a folder"):
            raise UserError(f"{path} exists and is not {what}; move it or choose another --out (nothing was changed)")


def read_taxon_names(path: Path | None, classes: list[str]) -> dict[str, str]:
    """``--taxon-names``: {class: EcoTaxa taxon name} from a CSV with columns class,ecotaxa."""
    if path is None:
        return {}
    names = read_name_mapping(path, "class", "ecotaxa", "--taxon-names")
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise UserError(f"--taxon-names {path} names classes the model does not have: {', '.join(unknown[:5])}")
    return names


def image_name(item: Item, kind: str) -> str:
    """Where an item's image goes inside the images folder: the name the table's cell holds, so
    a tab or line break in a file name (a space in the table) names the same file."""
    return clean_cell(f"{item.sample}/{item.id}.png" if kind == "ifcb" else item.file)


def replace_file(destination: Path, write) -> None:
    """``write(temporary path)``, then rename over ``destination`` (one file at a time, atomically)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    write(tmp)
    os.replace(tmp, destination)
    if tmp.exists():  # renaming a hard link onto the same file leaves it in place
        tmp.unlink()


def place_image(item: Item, kind: str, destination: Path) -> None:
    if kind == "ifcb":
        replace_file(destination, lambda tmp: Image.fromarray(roi_pixels(item)).save(tmp, format="PNG"))
        return

    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(item.path, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(item.path, tmp)

    replace_file(destination, link_or_copy)


def write_ecotaxa_results(table: pd.DataFrame, inputs: Inputs, out: Path, taxon_names: dict[str, str],
                          classifier: str) -> tuple[Path, int, list[str]]:
    """The EcoTaxa table and its images for the classified rows; returns the table's path, the
    number of objects and the table's problems by :func:`validate_ecotaxa_tsv` (none expected)."""
    tsv, images = output_paths(out)
    assert len(table) == len(inputs.items), "one result row per item, in the items' order"
    rows, used = [], set()
    for item, result in zip(inputs.items, table.itertuples(index=False)):
        if result.error:
            continue
        name = image_name(item, inputs.kind)
        place_image(item, inputs.kind, images / name)
        object_id = unique(item.id.replace("/", "_") if inputs.kind == "folder" else item.id, used)
        rows.append({"img_file_name": f"{images.name}/{name}", "img_rank": 0, "object_id": object_id,
                     "object_annotation_status": "predicted",
                     "object_annotation_category": taxon_names.get(result.predicted, result.predicted),
                     "object_classif_score": result.probability, "object_needs_review": int(result.needs_review),
                     "sample_id": item.sample, "process_classifier": classifier})
    columns = {k: v for k, v in TSV_COLUMNS.items() if k != "sample_id" or any(r["sample_id"] for r in rows)}
    write_ecotaxa_tsv(tsv, columns, rows)
    return tsv, len(rows), validate_ecotaxa_tsv(tsv)


def unique(value: str, used: set[str]) -> str:
    """``value``, or ``value_2``, ``value_3``... if it is taken (object_id must be unique)."""
    candidate, n = value, 1
    while candidate in used:
        n += 1
        candidate = f"{value}_{n}"
    used.add(candidate)
    return candidate
