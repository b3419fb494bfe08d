"""Writing EcoTaxa-importable tables, and checking one against EcoTaxa's import rules.

The rules (EcoTaxa's importer, "Import images and metadata"):
- the file is named ``ecotaxa_*.tsv``, tab-separated, UTF-8;
- row 1 holds the column names: lower case letters, digits and ``_``, each starting with
  ``object_``, ``sample_``, ``acq_`` or ``process_``, or one of ``img_file_name``/``img_rank``;
  no name twice;
- row 2 holds each column's type, ``[t]`` (text) or ``[f]`` (number); every ``[f]`` value is
  a number or empty;
- ``object_id`` is present, never empty and unique;
- ``img_file_name``, when present, is a relative path inside the table's folder to an
  existing file; ``img_rank`` is a whole number;
- ``object_annotation_status`` is ``predicted``, ``validated`` or ``dubious`` (or empty), and a
  ``predicted`` row names its ``object_annotation_category``.

EcoTaxa stores an imported prediction with score 1.0, so the model's probability travels in
a custom ``[f]`` column (``object_classif_score``).
"""
from __future__ import annotations

import csv
import io
import math
import posixpath
import re
from pathlib import Path

from plankton_transfer.files import atomic_path

TABLE_NAME = re.compile(r"^ecotaxa_.*\.tsv$")
COLUMN_NAME = re.compile(r"^[a-z0-9_]+$")
PREFIXES = ("object_", "sample_", "acq_", "process_")
IMAGE_COLUMNS = ("img_file_name", "img_rank")
STATUSES = ("predicted", "validated", "dubious", "")


def clean_cell(value) -> str:
    """A cell as text on one line (tabs and line breaks would break the table)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"[\t\r\n]+", " ", str(value))


def write_ecotaxa_tsv(path: str | Path, columns: dict[str, str], rows: list[dict]) -> None:
    """Write ``rows`` as an EcoTaxa table; ``columns`` maps each column name to ``[t]`` or ``[f]``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(list(columns))
    writer.writerow(list(columns.values()))
    for row in rows:
        writer.writerow([clean_cell(row.get(name, "")) for name in columns])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def validate_ecotaxa_tsv(path: str | Path) -> list[str]:
    """Every way ``path`` breaks EcoTaxa's import rules (module docstring); empty when it is valid."""
    path = Path(path)
    problems = [] if TABLE_NAME.match(path.name) else [f"file name {path.name!r} is not ecotaxa_*.tsv"]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        return problems + [f"not UTF-8 ({err})"]
    table = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if len(table) < 2:
        return problems + ["fewer than two rows: column names and types are required"]
    header, types, rows = table[0], table[1], table[2:]
    problems += header_problems(header, types)
    for number, row in enumerate(rows, start=3):
        if len(row) != len(header):
            problems.append(f"line {number} has {len(row)} cells, the header {len(header)}")
    rows = [dict(zip(header, row)) for row in rows if len(row) == len(header)]
    kinds = dict(zip(header, types))
    problems += number_problems(rows, kinds) + object_id_problems(rows, header)
    problems += image_problems(rows, header, path.parent) + annotation_problems(rows, header)
    return problems


def header_problems(header: list[str], types: list[str]) -> list[str]:
    problems = []
    if len(types) != len(header):
        problems.append(f"row 2 has {len(types)} types for {len(header)} columns")
    for name in header:
        if not COLUMN_NAME.match(name):
            problems.append(f"column name {name!r} is not lower case letters, digits and _")
        if not (name.startswith(PREFIXES) or name in IMAGE_COLUMNS):
            problems.append(f"column {name!r} does not start with {', '.join(PREFIXES)} and is not "
                            f"{' or '.join(IMAGE_COLUMNS)}")
    problems += [f"column {name!r} appears twice" for name in sorted({n for n in header if header.count(n) > 1})]
    problems += [f"type {kind!r} of column {name!r} is not [t] or [f]" for name, kind in zip(header, types)
                 if kind not in ("[t]", "[f]")]
    return problems


def number_problems(rows: list[dict], kinds: dict[str, str]) -> list[str]:
    problems = []
    for name in (n for n, kind in kinds.items() if kind == "[f]"):
        for number, row in enumerate(rows, start=3):
            value = row[name].strip()
            try:
                if value:
                    float(value)
            except ValueError:
                problems.append(f"line {number}: {name} is {value!r}, not a number ([f])")
    return problems


def object_id_problems(rows: list[dict], header: list[str]) -> list[str]:
    if "object_id" not in header:
        return ["no object_id column"]
    ids = [row["object_id"].strip() for row in rows]
    problems = [f"line {n}: empty object_id" for n, value in enumerate(ids, start=3) if not value]
    repeated = sorted({v for v in ids if v and ids.count(v) > 1})
    return problems + [f"object_id {value!r} appears more than once" for value in repeated[:20]]


def image_problems(rows: list[dict], header: list[str], folder: Path) -> list[str]:
    problems = []
    if "img_file_name" in header:
        for number, row in enumerate(rows, start=3):
            name = row["img_file_name"]
            normal = posixpath.normpath(name) if name else ""
            if not name or name.startswith("/") or normal == ".." or normal.startswith("../"):
                problems.append(f"line {number}: img_file_name {name!r} is not a relative path inside the folder")
            elif not (folder / name).is_file():
                problems.append(f"line {number}: image {name!r} not found beside the table")
    if "img_rank" in header:
        problems += [f"line {n}: img_rank {row['img_rank']!r} is not a whole number"
                     for n, row in enumerate(rows, start=3) if not re.fullmatch(r"\d+", row["img_rank"].strip())]
    return problems


def annotation_problems(rows: list[dict], header: list[str]) -> list[str]:
    if "object_annotation_status" not in header:
        return []
    problems = []
    for number, row in enumerate(rows, start=3):
        status = row["object_annotation_status"].strip()
        if status not in STATUSES:
            problems.append(f"line {number}: object_annotation_status {status!r} is not one of "
                            f"{', '.join(s for s in STATUSES if s)}")
        elif status == "predicted" and not row.get("object_annotation_category", "").strip():
            problems.append(f"line {number}: a predicted object without object_annotation_category")
    return problems
