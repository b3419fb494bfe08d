"""Writing a prediction run's results: one folder, replaced as a whole.

For ``--out results/cruise42`` (``plankton-predict``, and ``plankton-select`` alike):
- ``predictions.csv``: one row per image or ROI (id, file, sample, predicted class or
  ``unknown``, probability, review flag and reason, unknown score, ..., error);
- ``counts.csv``: per sample, the images of each class by classify and count, probabilistic
  count and EM (evaluation/abundance.py ``sample_counts``), unknown images apart;
- ``ecotaxa_cruise42.zip``: what EcoTaxa imports (docs/formats.md): ``ecotaxa_cruise42.tsv``
  (UTF-8 with a byte-order mark; status ``predicted``, except images flagged unknown, which
  are left unclassified (no status, no category) for a person to sort; the probability, review
  flag and reason, the unknown score and the original file name in free columns; ``process_id`` with ``process_classifier``) and
  ``images/`` with every image it names. Images are copied, never linked to the originals (an
  edit of the upload copy never touches a field image); a format EcoTaxa does not take (TIFF,
  BMP, WebP, PNM) is converted to PNG; IFCB ROIs are written as PNG;
- ``run.json``: what made it (model, its sha256, input, counts); it also marks the folder as
  this command's own, so a later run may replace it.

The folder is written under a temporary name and renamed into place only when complete
(plankton_transfer/files.py), so a killed run never leaves a new CSV beside an old table. An
existing folder is replaced only when ``run.json`` says a prediction run wrote it; any other
existing path is refused before any work, as is a folder inside the input, or one holding the
model file or the input.
"""
from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from PIL import Image

from plankton_transfer.data.ecotaxa import read_name_mapping
from plankton_transfer.data.ecotaxa_tsv import TEXT_LIMIT, check_upload, clean_cell, image_format, table_text
from plankton_transfer.data.sources import Inputs, Item, roi_pixels
from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path, write_csv
from plankton_transfer.params.image import ImageParams
from plankton_transfer.records import Record

RUN_FILE = "run.json"
UNKNOWN = "unknown"  # the class of an image the model's unknown detector flags (models/unknown.py)


@dataclasses.dataclass(frozen=True)
class PredictionRun(Record):
    """``run.json`` of a results folder."""

    FORMAT = "plankton-transfer/prediction-run"
    VERSION = 1
    REMAKE = "write the results to a new folder"

    command: str  # plankton-predict | plankton-select
    model: str
    model_file: str
    model_sha256: str
    input: str
    input_kind: str
    images: int  # classified
    failed: int
    ignored: dict[str, int]
    ecotaxa_objects: int
    settings: dict[str, Any]


def is_results_folder(folder: Path) -> bool:
    """A folder a prediction run wrote (its run.json says so), which a new run may replace."""
    try:
        data = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == PredictionRun.FORMAT


def check_output(out: Path, input_path: Path, *read: Path | None) -> None:
    """Refuse, before any work, an ``--out`` that would write over or inside what is not ours."""
    if out.suffix.lower() == ".csv":
        raise UserError(f"--out {out} names a CSV file; the results are a folder (predictions.csv, the EcoTaxa upload "
                        f"and run.json): give a folder such as {out.with_suffix('')} (nothing was changed)")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"--out {out} exists and is not a folder; choose a new folder for the results "
                            "(nothing was changed)")
        if not is_results_folder(out):
            raise UserError(f"--out {out} exists and was not written by a prediction run (no {RUN_FILE}); choose a "
                            "new folder: an existing folder is never written into (nothing was changed)")
    real_out = out.resolve()
    for path in (input_path, *read):
        if path is None:
            continue
        real = path.resolve()
        if real == real_out or real.is_relative_to(real_out):
            raise UserError(f"--out {out} holds {path}, which this run reads; give a folder of its own for the results "
                            "(nothing was changed)")
    if input_path.is_dir() and real_out.is_relative_to(input_path.resolve()):
        raise UserError(f"--out {out} lies inside the input folder {input_path}; write the results elsewhere "
                        "(nothing was changed)")


def read_taxon_names(path: Path | None, classes: tuple[str, ...]) -> dict[str, str]:
    """``--taxon-names``: {class: EcoTaxa taxon name} from a CSV with columns class,ecotaxa."""
    if path is None:
        return {}
    names = read_name_mapping(path, "class", "ecotaxa", "--taxon-names")
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise UserError(f"--taxon-names {path} names classes the model does not have: {', '.join(unknown[:5])}")
    empty = sorted(c for c, taxon in names.items() if not taxon)
    if empty:
        raise UserError(f"--taxon-names {path} gives no EcoTaxa name for {', '.join(empty[:5])}; EcoTaxa needs a "
                        "category for every predicted object: fill the ecotaxa column or remove those lines")
    return names


def unique(value: str, used: set[str]) -> str:
    """``value``, or ``value_2``, ``value_3``... if it is taken."""
    candidate, n = value, 1
    while candidate in used:
        n += 1
        stem, dot, suffix = value.rpartition(".")
        candidate = f"{stem}_{n}.{suffix}" if dot and "/" not in suffix else f"{value}_{n}"
    used.add(candidate)
    return candidate


def upload_image(item: Item, kind: str, image_cfg: ImageParams) -> tuple[str, bytes]:
    """(name inside images/, the file's bytes): the original bytes when EcoTaxa takes its format,
    else a PNG of it (IFCB ROIs: PNG of the stored pixels)."""
    if kind == "ifcb":
        return clean_cell(f"{item.sample}/{item.id}.png"), png_bytes(Image.fromarray(roi_pixels(item, image_cfg)))
    data = Path(item.path).read_bytes()  # follows a link: the file, not the link, goes into the upload
    name = clean_cell(item.file)
    if image_format(data[:16]):
        return name, data
    with Image.open(item.path) as img:
        img.seek(0)
        return str(PurePosixPath(name).with_suffix(".png")), png_bytes(img.convert("RGBA" if "A" in img.mode else "RGB"))


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def object_id_of(item: Item, kind: str, id_prefix: str) -> str:
    """The EcoTaxa ``object_id`` an item is uploaded under (before a ``_2`` suffix that keeps a
    repeated id unique): ``id_prefix`` + its id, an image folder's path with ``/`` as ``_``."""
    return clean_cell(id_prefix + (item.id.replace("/", "_") if kind == "folder" else item.id))


@dataclasses.dataclass
class UploadRow:
    item: Item
    result: Any  # a row of the results table (itertuples)
    extra: dict[str, Any]  # more object_ columns (name -> value), e.g. a selection strategy's value


def ecotaxa_rows(rows: list[UploadRow], inputs: Inputs, images: zipfile.ZipFile, taxon_names: dict[str, str],
                 process: dict[str, str], id_prefix: str, image_cfg: ImageParams) -> list[dict]:
    """Write each classified row's image into ``images`` and return its table row."""
    used_ids, used_names, table = set(), set(), []
    for row in rows:
        item, result = row.item, row.result
        name, data = upload_image(item, inputs.kind, image_cfg)
        name = unique(name, used_names)
        images.writestr(f"images/{name}", data, compress_type=zipfile.ZIP_STORED)
        object_id = unique(object_id_of(item, inputs.kind, id_prefix), used_ids)
        unknown = result.predicted == UNKNOWN
        scored = {"object_unknown_score": result.unknown_score} if hasattr(result, "unknown_score") else {}
        table.append({"object_id": object_id, "img_file_name": f"images/{name}",
                      "object_annotation_status": "" if unknown else "predicted",
                      "object_annotation_category": "" if unknown else taxon_names.get(result.predicted,
                                                                                        result.predicted),
                      "object_classif_score": result.probability, "object_needs_review": int(result.needs_review),
                      "object_review_reason": result.review_reason, "object_original_file": clean_cell(item.file)[:TEXT_LIMIT],
                      **scored, **row.extra, "sample_id": item.sample or inputs.root.name, **process})
    return table


def table_columns(extra: dict[str, str], with_samples: bool, with_unknown: bool) -> dict[str, str]:
    columns = {"object_id": "[t]", "img_file_name": "[t]", "object_annotation_status": "[t]",
               "object_annotation_category": "[t]", "object_classif_score": "[f]", "object_needs_review": "[f]",
               "object_review_reason": "[t]", "object_original_file": "[t]"}
    columns |= ({"object_unknown_score": "[f]"} if with_unknown else {}) | extra
    if with_samples:
        columns["sample_id"] = "[t]"
    return columns | {"process_id": "[t]", "process_classifier": "[t]"}


def write_results(out: Path, table: pd.DataFrame, inputs: Inputs, run: PredictionRun, taxon_names: dict[str, str],
                  id_prefix: str, image_cfg: ImageParams, extra_columns: dict[str, str] | None = None,
                  extra_values: list[dict] | None = None,
                  upload: list[bool] | None = None, counts: pd.DataFrame | None = None) -> tuple[Path, list[str]]:
    """The results folder ``out`` (module docstring), replacing an earlier results folder at once;
    returns the upload's path and its problems by EcoTaxa's rules (none expected).

    ``extra_columns`` (name -> ``[t]``/``[f]``) and ``extra_values`` (one dict per item) add
    ``object_`` columns to the upload; ``upload`` (one flag per item) keeps only the flagged
    classified rows in it (plankton-select: the picks), while predictions.csv keeps every row;
    ``counts``: counts.csv (per sample and class)."""
    assert len(table) == len(inputs.items), "one result row per item, in the items' order"
    extra_columns = extra_columns or {}
    values = extra_values or [{} for _ in inputs.items]
    wanted = upload if upload is not None else [True] * len(inputs.items)
    assert len(values) == len(wanted) == len(inputs.items), "one extra dict and one upload flag per item"
    rows = [UploadRow(item, result, extra) for item, result, extra, keep in
            zip(inputs.items, table.itertuples(index=False), values, wanted) if keep and not result.error]
    process = {"process_id": clean_cell(f"{run.command} {run.model} {run.model_sha256[:12]}"),
               "process_classifier": clean_cell(f"plankton-transfer {run.model}")}
    name = f"ecotaxa_{out.name}"
    with atomic_path(out, directory=True, replaceable=is_results_folder) as folder:
        folder.mkdir()
        write_csv(folder / "predictions.csv", table)
        if counts is not None:
            write_csv(folder / "counts.csv", counts)
        with zipfile.ZipFile(folder / f"{name}.zip", "w") as upload:
            records = ecotaxa_rows(rows, inputs, upload, taxon_names, process, id_prefix, image_cfg)
            with_samples = any(r.item.sample for r in rows)
            columns = table_columns(extra_columns, with_samples, "unknown_score" in table.columns)
            upload.writestr(f"{name}.tsv", table_text(columns, records))
        problems = check_upload(folder / f"{name}.zip")
        dataclasses.replace(run, ecotaxa_objects=len(records)).save_json(folder / RUN_FILE)
    return out / f"{name}.zip", problems
