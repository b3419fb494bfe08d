"""Writing EcoTaxa import tables, and checking an upload against EcoTaxa's import rules.

Checked against EcoTaxa's own importer (ecotaxa/ecotaxa_back ``py/BO/TSVFile.py``, ``Image.py``,
``Bundle.py``; docs/formats.md) and pyecotaxa, a maintained client library:

- :func:`check_upload` runs pyecotaxa's ``Archive.validate()`` on the zip a user uploads (column
  names and prefixes, and the ``<prefix>_id`` rule: ``process_id`` whenever a ``process_*``
  column is present), then :func:`importer_rules` for what pyecotaxa does not check;
- :func:`importer_rules`: a UTF-8 byte-order mark (without one, EcoTaxa reads the table as
  Latin-1 and silently garbles accented names: TSVFile.py 103-111), the types row, ``object_id``
  present and unique in every line (1020-1026, 1055-1062), every image present and PNG, JPEG
  or GIF by its content (Image.py:16), ``[f]`` cells that EcoTaxa's ``float()`` reads
  (1190-1200), status and category given together (1090-1108), at most 20 free text and 500
  free number ``object_`` columns and 250 characters per text cell (971-988, DB/Object.py).

EcoTaxa stores an imported prediction with score 1.0, so the model's probability travels in a
free ``[f]`` column (``object_classif_score``).
"""
from __future__ import annotations

import collections
import csv
import io
import math
import re
import zipfile
from pathlib import Path, PurePosixPath

BOM = "\ufeff"
TABLE_NAME = re.compile(r"^ecotaxa.*\.(tsv|txt)$")  # Bundle.py:35, case-sensitive
STATUSES = ("predicted", "validated", "dubious", "discarded", "noid", "")  # DB/Object.py, TSVFile.py:1234
IMAGE_FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF"}
TEXT_LIMIT = 250  # object_ free text columns are VARCHAR(250) (DB/Object.py t01-t20)
FREE_LIMITS = {"[t]": 20, "[f]": 500}  # free object_ columns per project (TSVFile.py 971-988)
PREDEFINED = {"object_id", "object_annotation_category", "object_annotation_category_id", "object_annotation_date",
              "object_annotation_person_name", "object_annotation_person_email", "object_annotation_status",
              "object_annotation_time", "object_lat", "object_lon", "object_date", "object_time", "object_link",
              "object_depth_min", "object_depth_max", "img_rank", "img_file_name"}  # Mappings.py, not free columns


def clean_cell(value) -> str:
    """A cell as text on one line (tabs and line breaks would break the table)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"[\t\r\n]+", " ", str(value))


def table_text(columns: dict[str, str], rows: list[dict]) -> str:
    """``rows`` as an EcoTaxa table (``columns``: name -> ``[t]`` or ``[f]``), with the byte-order
    mark EcoTaxa needs to read it as UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(list(columns))
    writer.writerow(list(columns.values()))
    for row in rows:
        writer.writerow([clean_cell(row.get(name, "")) for name in columns])
    return BOM + buffer.getvalue()


def image_format(head: bytes) -> str:
    """PNG, JPEG or GIF from a file's first bytes ('' for anything else)."""
    return next((name for magic, name in IMAGE_FORMATS.items() if head.startswith(magic)), "")


def importer_rules(name: str, data: bytes, image_heads: dict[str, bytes]) -> list[str]:
    """Every way the table ``data`` (named ``name``) breaks an EcoTaxa importer rule that pyecotaxa
    does not check; ``image_heads``: the first bytes of every file of the upload, by its path."""
    problems = [] if TABLE_NAME.match(PurePosixPath(name).name) else [f"{name}: the name must be ecotaxa*.tsv"]
    if not data.startswith(BOM.encode()):
        problems.append(f"{name}: no UTF-8 byte-order mark: EcoTaxa would read the table as Latin-1")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return problems + [f"{name}: not UTF-8 ({err})"]
    table = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if len(table) < 2:
        return problems + [f"{name}: fewer than two rows: the column names and the types row are required"]
    header, types, rows = table[0], table[1], table[2:]
    problems += [f"{name}: type {t!r} of column {h!r} is not [t] or [f]" for h, t in zip(header, types)
                 if t not in ("[t]", "[f]")]
    problems += free_column_problems(name, header, types)
    records = []
    for number, row in enumerate(rows, start=3):
        if len(row) > len(header):
            problems.append(f"{name} line {number}: {len(row)} cells for {len(header)} columns")
        records.append((number, dict(zip(header, row))))
    folder = PurePosixPath(name).parent
    problems += line_problems(name, records, dict(zip(header, types)), folder, image_heads)
    return problems


def free_column_problems(name: str, header: list[str], types: list[str]) -> list[str]:
    free = collections.Counter(t for h, t in zip(header, types) if h.startswith("object_") and h not in PREDEFINED)
    return [f"{name}: {n} free object_ {kind} columns; EcoTaxa keeps at most {FREE_LIMITS[kind]}"
            for kind, n in free.items() if kind in FREE_LIMITS and n > FREE_LIMITS[kind]]


def line_problems(name: str, records: list[tuple[int, dict]], kinds: dict[str, str], folder: PurePosixPath,
                  image_heads: dict[str, bytes]) -> list[str]:
    problems = []
    ids = collections.Counter((r.get("object_id", "").strip(), r.get("img_file_name", "")) for _, r in records)
    problems += [f"{name}: object {oid!r} with image {img!r} listed {n} times" for (oid, img), n in ids.items() if n > 1]
    for number, row in records:
        where = f"{name} line {number}"
        if not row.get("object_id", "").strip():
            problems.append(f"{where}: empty object_id")
        image = row.get("img_file_name", "")
        path = (folder / image).as_posix() if image else ""
        if not image or path not in image_heads:
            problems.append(f"{where}: image {image!r} not in the upload")
        elif not image_format(image_heads[path]):
            problems.append(f"{where}: image {image!r} is not PNG, JPEG or GIF (EcoTaxa refuses other formats)")
        status = row.get("object_annotation_status", "").strip().lower()
        category = row.get("object_annotation_category", "").strip()
        if status not in STATUSES:
            problems.append(f"{where}: object_annotation_status {status!r} is not one of {', '.join(STATUSES[:-1])}")
        elif bool(status) != bool(category):
            problems.append(f"{where}: a status needs a category and a category a status")
        for column, kind in kinds.items():
            value = row.get(column, "").strip()
            if kind == "[f]" and value and value.lower() not in ("nan", "na") and not is_float(value):
                problems.append(f"{where}: {column} is {value!r}, not a number ([f])")
            if kind == "[t]" and column.startswith("object_") and column not in PREDEFINED and len(value) > TEXT_LIMIT:
                problems.append(f"{where}: {column} has {len(value)} characters; EcoTaxa keeps at most {TEXT_LIMIT}")
    return problems


def is_float(value: str) -> bool:
    try:
        return float(value) != -math.inf  # EcoTaxa's to_float refuses -inf
    except ValueError:
        return False


def upload_contents(upload: zipfile.ZipFile) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(tables by name, first bytes of every file by name) of an EcoTaxa upload."""
    tables, heads = {}, {}
    for info in upload.infolist():
        if info.is_dir():
            continue
        with upload.open(info) as f:
            if TABLE_NAME.match(PurePosixPath(info.filename).name):
                tables[info.filename] = f.read()
            heads[info.filename] = tables[info.filename][:16] if info.filename in tables else f.read(16)
    return tables, heads


def pyecotaxa_problems(zip_path: Path) -> list[str]:
    """pyecotaxa's ``Archive.validate()`` (pyecotaxa checks column names and the ``*_id`` rule)."""
    import pandas as pd
    from pyecotaxa.archive import Archive, ValidationError

    try:
        with Archive(zip_path) as archive:
            archive.validate()
    except ValidationError as err:
        return [f"pyecotaxa: {line}" for line in str(err).splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        return [f"pyecotaxa cannot read the table: {err}"]
    return []


def check_upload(zip_path: str | Path) -> list[str]:
    """Everything wrong with an EcoTaxa upload: pyecotaxa's validation plus :func:`importer_rules`."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path) as upload:
        tables, heads = upload_contents(upload)
    if not tables:
        return [f"{zip_path}: no ecotaxa*.tsv table in the upload"]
    problems = pyecotaxa_problems(zip_path)
    for name, data in tables.items():
        problems += importer_rules(name, data, heads)
    return problems
