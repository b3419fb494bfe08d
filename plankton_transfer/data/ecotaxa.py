"""Reading unzipped EcoTaxa exports: ``ecotaxa_*.tsv`` tables with their images beside them.

An export holds one or more tables (tab-separated, UTF-8, row 1 the column names, row 2 the
types ``[t]``/``[f]`` when it was made for re-import, sometimes absent), anywhere below the
export folder; each row is one image of one object, ``img_file_name`` is relative to its
table. The filter stage reads an export with :func:`scan_ecotaxa`, which gives the same
:class:`~plankton_transfer.data.scan.Scan` as a class-folder scan, so validation,
duplicates, class selection and the report work unchanged:

- the class is ``ecotaxa.category`` (``object_annotation_category``, or
  ``object_annotation_hierarchy`` for the full taxonomic path), optionally renamed or merged
  by the ``ecotaxa.mapping`` CSV (columns ``ecotaxa,class``; an empty class leaves the objects out);
- only rows whose ``object_annotation_status`` is in ``ecotaxa.statuses`` (default
  ``validated``) are used; other rows, unclassified objects, secondary images of an object
  (``img_rank`` above its lowest), images no table lists and the tables themselves are
  ignored with their reason; a listed image that is not there is reported as missing.
"""
from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from plankton_transfer.data.images import is_image_name
from plankton_transfer.data.scan import Candidate, Scan, is_hidden, leaves_raw, refuse_outside_links
from plankton_transfer.errors import UserError
from plankton_transfer.params.ecotaxa import EcotaxaParams

TABLE_NAME = re.compile(r"^ecotaxa.*\.tsv$", re.IGNORECASE)  # what EcoTaxa's importer picks up
TYPE_CELL = re.compile(r"^\[[tf]\]$")
STATUS_COLUMN = "object_annotation_status"
SECONDARY = "secondary image of an object (higher img_rank): only its main image is used"


@dataclasses.dataclass(frozen=True)
class EcotaxaRow:
    """One object's main image, as a table lists it."""

    object_id: str
    path: str  # POSIX, relative to the export folder ("" when img_file_name leaves it)
    where: str  # "<table> line <n>", for messages
    values: dict  # the row's columns (text)
    main: bool = True  # the object's main image (lowest img_rank)


def find_tables(raw: str | Path) -> list[Path]:
    """Every ``ecotaxa*.tsv`` below ``raw`` (hidden folders skipped), in path order."""
    tables = []
    for folder, dirs, files in os.walk(raw):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        tables += [Path(folder) / f for f in sorted(files) if TABLE_NAME.match(f) and not is_hidden(f)]
    return tables


def is_ecotaxa_export(raw: str | Path) -> bool:
    return Path(raw).is_dir() and bool(find_tables(raw))


def read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """A table's rows as text (the types row dropped) and the file line of its first row.

    Cells may be quoted as EcoTaxa's exports quote them (``"text"``). A cell that opens a quote
    it does not close on its line (``"big one`` written by a tool that does not quote) would
    swallow the rows after it into one cell: such a table is refused, naming the line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; export it from EcoTaxa again without the Latin-1 option, or "
                        "convert it (e.g. iconv -f latin1 -t utf-8)") from None
    try:
        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path} is not a tab-separated EcoTaxa table ({str(err).strip()}); export it again") from None
    refuse_unclosed_quotes(path, text, frame)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    for column in ("object_id", "img_file_name"):
        if column not in frame.columns:
            raise UserError(f"{path} has no {column} column; is it an EcoTaxa export table?")
    first_line = 2
    if len(frame) and all(TYPE_CELL.match(str(v).strip()) for v in frame.iloc[0]):
        frame, first_line = frame.iloc[1:].reset_index(drop=True), 3
    return frame, first_line


def refuse_unclosed_quotes(path: Path, text: str, frame: pd.DataFrame) -> None:
    """One line when a quoted cell spans lines: fewer rows were read than the table has lines."""
    lines = [line for line in text.splitlines()[1:] if line.strip()]
    if len(frame) == len(lines):
        return
    for i, row in enumerate(frame.itertuples(index=False)):
        if any("\n" in str(cell) or "\r" in str(cell) for cell in row):
            raise UserError(f"{path} line {i + 2}: a cell opens a quote (\") that its line does not close, so the "
                            "rows after it would be read into that cell; remove the stray quote or quote the whole "
                            "cell (\"...\") as EcoTaxa does")


def image_path(table_dir: PurePosixPath, name: str) -> str:
    """``img_file_name`` as a POSIX path relative to the export folder; '' if it leaves it."""
    name = name.strip().replace("\\", "/")
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return ""
    joined = posixpath.normpath((table_dir / name).as_posix())
    return "" if joined == ".." or joined.startswith("../") else joined


def main_rank_rows(frame: pd.DataFrame) -> pd.Series:
    """True for each object's main image: its lowest ``img_rank`` (first row on a tie). A row
    without an object_id is its own object (rows with empty ids are not images of one object)."""
    no_id = frame["object_id"].str.strip() == ""
    if "img_rank" not in frame.columns:
        return ~frame["object_id"].duplicated() | no_id
    rank = pd.to_numeric(frame["img_rank"], errors="coerce").fillna(0)
    order = rank.sort_values(kind="stable").index
    first = ~frame.loc[order, "object_id"].duplicated()
    return first.reindex(frame.index) | no_id


def read_rows(raw: Path) -> tuple[list[EcotaxaRow], list[Path]]:
    """Every row of every table below ``raw``, and the tables."""
    rows, tables = [], find_tables(raw)
    for table in tables:
        frame, first_line = read_table(table)
        name = table.relative_to(raw).as_posix()
        folder = PurePosixPath(table.parent.relative_to(raw).as_posix())
        main = main_rank_rows(frame)
        for i, values in enumerate(frame.to_dict("records")):
            rows.append(EcotaxaRow(object_id=values["object_id"].strip(), where=f"{name} line {first_line + i}",
                                   path=image_path(folder, values["img_file_name"]), values=values,
                                   main=bool(main[i])))
    return rows, tables


def read_mapping(raw: Path, name: str | None) -> tuple[dict[str, str], str]:
    """``ecotaxa.mapping``: {EcoTaxa category: class} and the file's path relative to ``raw``."""
    if name is None:
        return {}, ""
    rel = posixpath.normpath(name.replace("\\", "/"))
    if Path(name).is_absolute() or rel.startswith("../") or rel == "..":
        raise UserError(f"params.yaml: ecotaxa.mapping is {name!r}; put the file inside data.raw ({raw}) and give "
                        "its path relative to it, so DVC re-runs the filter stage when it changes")
    path = raw / rel
    if not path.is_file():
        raise UserError(f"ecotaxa.mapping: {path} not found; create it (columns ecotaxa,class) or set it to null")
    return read_name_mapping(path, "ecotaxa", "class", "ecotaxa.mapping"), rel


def read_name_mapping(path: Path, key: str, value: str, label: str) -> dict[str, str]:
    """{``key`` column: ``value`` column} from a UTF-8 CSV with those two named columns, each key
    on one line (``ecotaxa.mapping``, predict's ``--taxon-names``); ``label`` names the file's
    source in messages."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        raise UserError(f"{label} {path} is not a readable UTF-8 CSV with columns {key},{value}; "
                        "fix the file") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if not {key, value} <= set(table.columns):
        raise UserError(f"{label} {path} needs the columns {key} and {value} (has {', '.join(table.columns)}); "
                        "fix its header")
    mapping: dict[str, str] = {}
    for source, target in zip(table[key].str.strip(), table[value].str.strip()):
        if mapping.get(source, target) != target:
            raise UserError(f"{label} {path} maps '{source}' to both '{mapping[source]}' and '{target}'; keep one line")
        mapping[source] = target
    return mapping


def row_label(row: EcotaxaRow, cfg: EcotaxaParams, mapping: dict[str, str]) -> tuple[str, str]:
    """(class, '') for a row to train on, or ('', why it is left out)."""
    for column in (STATUS_COLUMN, cfg.category):
        if column not in row.values:
            raise UserError(f"{row.where.split(' line ')[0]} has no {column} column; export the project with its "
                            "annotations" + (" or set ecotaxa.category to the other category column"
                                             if column == cfg.category else ""))
    status = row.values[STATUS_COLUMN].strip().lower()
    if status not in cfg.statuses:
        return "", f"{STATUS_COLUMN} '{status or 'none'}' not in ecotaxa.statuses ({', '.join(cfg.statuses)})"
    category = row.values[cfg.category].strip()
    if not category:
        return "", f"no {cfg.category} (unclassified object)"
    label = mapping.get(category, category)
    if not label:
        return "", f"category '{category}' mapped to no class in ecotaxa.mapping"
    return label, ""


def scan_ecotaxa(raw: str | Path, cfg: EcotaxaParams) -> Scan:
    """List every file below an EcoTaxa export as a candidate image or an ignored entry."""
    raw = Path(raw)
    rows, tables = read_rows(raw)
    if not rows:
        raise UserError(f"the EcoTaxa tables in {raw} list no objects; export the project again with its images")
    mapping, mapping_name = read_mapping(raw, cfg.mapping)
    scan = Scan(layout="EcoTaxa export")
    decided: dict[str, dict] = {}  # image path -> {} (a candidate) or its ignored entry
    for row in rows:
        if not row.path:
            scan.ignored.append(entry(row.values["img_file_name"], "img_file_name leaves the export folder", row, 0))
        elif row.path in decided:
            relisted(row, cfg, mapping, scan)
        elif not (raw / row.path).is_file():
            decided[row.path] = entry(row.path, "missing image", row, 0)
            scan.ignored.append(decided[row.path])
        elif not row.main:
            decided[row.path] = entry(row.path, SECONDARY, row, 1)
            scan.ignored.append(decided[row.path])
        else:
            label, why = row_label(row, cfg, mapping)
            decided[row.path] = entry(row.path, why, row, 1) if why else {}
            if why:
                scan.ignored.append(decided[row.path])
            else:
                scan.candidates.append(Candidate(path=row.path, label_name=label, split="",
                                                 sample=row.values.get("sample_id", "").strip()))
                scan.class_folders[label] = scan.class_folders.get(label, 0) + 1
    account_files(raw, scan, decided, {t.relative_to(raw).as_posix() for t in tables}, mapping_name)
    scan.outside_links = linked_folders_outside(raw, [c.path for c in scan.candidates])
    refuse_outside_links(raw, scan)
    return scan


def relisted(row: EcotaxaRow, cfg: EcotaxaParams, mapping: dict[str, str], scan: Scan) -> None:
    """An image a table lists again: under another class it is a label conflict (both copies
    dropped by the filter, as for one image filed in two class folders); else a repeat."""
    earlier = next((c for c in scan.candidates if c.path == row.path), None)
    label, why = row_label(row, cfg, mapping) if row.main else ("", "")
    if earlier is not None and label and label != earlier.label_name:
        scan.candidates.append(Candidate(path=row.path, label_name=label, split=""))  # a conflict of two labels
        scan.class_folders[label] = scan.class_folders.get(label, 0) + 1
    else:
        scan.ignored.append(entry(row.path, "image listed again", row, 0))


def linked_folders_outside(raw: Path, paths: list[str]) -> list[str]:
    """The folders (relative to ``raw``) of listed images reached through a folder link that
    leaves ``raw``: DVC would not see changes there."""
    outside = set()
    for folder in sorted({posixpath.dirname(p) for p in paths if "/" in p}):
        if leaves_raw(raw, Path(folder)):
            outside.add(folder)
    return sorted(outside)


def entry(path: str, reason: str, row: EcotaxaRow, files: int) -> dict:
    """An ignored entry of the report, naming the table line that lists it."""
    return {"path": path, "reason": reason, "files": files, "listed_in": row.where}


def account_files(raw: Path, scan: Scan, decided: dict[str, dict], tables: set[str], mapping_name: str) -> None:
    """Every file on disk that no row decided on becomes an ignored entry with its reason."""
    for folder, dirs, files in os.walk(raw):
        rel_dir = PurePosixPath(Path(folder).relative_to(raw).as_posix())
        for d in sorted(dirs):
            if is_hidden(d):
                count = sum(len(names) for _, _, names in os.walk(Path(folder) / d))
                scan.ignored.append({"path": f"{(rel_dir / d).as_posix()}/", "files": count,
                                     "reason": "hidden folder" if d.startswith(".") else "system folder"})
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for name in sorted(files):
            rel = posixpath.normpath((rel_dir / name).as_posix())
            if rel in decided:
                continue  # a candidate, or a row left out whose entry already counts the file
            why = ("hidden file" if is_hidden(name) else "EcoTaxa table" if rel in tables
                   else "ecotaxa.mapping file" if rel == mapping_name
                   else "image not listed in any EcoTaxa table" if is_image_name(name)
                   else f"not listed in any EcoTaxa table ({Path(name).suffix.lower() or 'no extension'})")
            scan.ignored.append({"path": rel, "reason": why, "files": 1})


def unlisted_images(root: Path, listed: set[str]) -> int:
    """Image files in the export folder that no table row names (counted, so none vanish unseen)."""
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        rel = Path(folder).relative_to(root)
        count += sum(1 for f in files if not is_hidden(f) and is_image_name(f) and (rel / f).as_posix() not in listed)
    return count
