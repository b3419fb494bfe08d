"""Where images come from: the one input interface of the filter stage, ``plankton-predict`` and
``plankton-select``.

Three kinds of input, told apart by :func:`detect_kind` (or named with ``--input-type``):

- ``folder``: class folders (``raw/<class>/**``, or ``raw/{train,val,test}/<class>/**``) for
  training, any folder of images (searched recursively) for prediction: data/scan.py;
- ``ecotaxa``: an unzipped EcoTaxa export, ``ecotaxa_*.tsv`` tables with their images
  (data/ecotaxa.py);
- ``ifcb``: IFCB bins, ``.hdr``/``.adc``/``.roi`` files of both instrument generations
  (data/ifcb.py).

Each kind answers two questions: :func:`labelled_scan` (the filter stage: which images, in
which class, and what was left out and why: a :class:`~plankton_transfer.data.scan.Scan`) and
:func:`list_inputs` (prediction and selection: every image or ROI as an :class:`Item`, with
an error where it is known to be unusable, and counts of what was left out by rule). A new
input format is one module plus its entries in :data:`KINDS` and the two functions.
Nothing is dropped silently: every file becomes an item, an error row or a counted entry.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import numpy as np
from PIL import Image

from plankton_transfer.data import ecotaxa, ifcb
from plankton_transfer.data.images import BadImage, load_rgb
from plankton_transfer.data.scan import NAME_NOT_UTF8, Scan, collect_images, is_hidden, scan_dataset
from plankton_transfer.errors import UserError
from plankton_transfer.params.ecotaxa import EcotaxaParams
from plankton_transfer.params.image import ImageParams

KINDS = {"folder": "image folder", "ecotaxa": "EcoTaxa export", "ifcb": "IFCB bins"}
BROKEN = "broken link or special file"


@dataclasses.dataclass(frozen=True)
class Item:
    id: str  # folder: path relative to the input; EcoTaxa: object_id; IFCB: ROI id
    file: str  # the file it comes from, relative to the input
    path: str = ""  # the image file to read
    roi: tuple[str, int, int, int] | None = None  # IFCB: (.roi file, start byte, width, height)
    sample: str = ""  # EcoTaxa sample_id, IFCB bin
    error: str = ""  # known before reading


@dataclasses.dataclass
class Inputs:
    kind: str  # a key of KINDS
    root: Path
    items: list[Item] = dataclasses.field(default_factory=list)
    ignored: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # reason -> files
    decided_by: str = ""  # what told the kind apart (for the summary)


def readable(text: str) -> str:
    """A file name as UTF-8 text; bytes that are not UTF-8 shown as ``\\xe4`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def detect_kind(path: Path) -> tuple[str, str]:
    """(kind, what decided it): ``ecotaxa`` if ``path`` holds ``ecotaxa_*.tsv`` tables, ``ifcb`` if
    it holds IFCB ``.adc`` files, else ``folder``."""
    if not path.is_dir():
        return "folder", ""
    tables, bins = [], []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        rel = Path(folder).relative_to(path)
        tables += [(rel / f).as_posix() for f in sorted(files) if ecotaxa.TABLE_NAME.match(f) and not is_hidden(f)]
        bins += [(rel / f).as_posix() for f in sorted(files) if f.endswith(".adc") and ifcb.schema_of(f[:-4])]
    if tables and bins:
        raise UserError(f"{path} holds both EcoTaxa tables ({tables[0]}) and IFCB bins ({bins[0]}); choose one with "
                        "--input-type ecotaxa|ifcb")
    if tables:
        return "ecotaxa", f"EcoTaxa table {readable(tables[0])}" + (f" and {len(tables) - 1} more" if len(tables) > 1 else "")
    if bins:
        return "ifcb", f"IFCB bin {readable(bins[0])}" + (f" and {len(bins) - 1} more" if len(bins) > 1 else "")
    return "folder", ""


# ---- the filter stage: labelled images ----

def labelled_scan(raw: Path, ecotaxa_cfg: EcotaxaParams) -> Scan:
    """Every file below ``data.raw`` as a labelled candidate image or an entry left out with its reason."""
    kind, _ = detect_kind(raw) if raw.is_dir() else ("folder", "")
    if kind == "ecotaxa":
        return ecotaxa.scan_ecotaxa(raw, ecotaxa_cfg)
    if kind == "ifcb":
        raise UserError(f"data.raw {raw} holds IFCB bins, which carry no labels; to train, export labelled ROIs as "
                        "class folders or an EcoTaxa export (IFCB bins are for plankton-predict)")
    return scan_dataset(raw)


# ---- prediction and selection: every image or ROI ----

def list_inputs(path: str | Path, kind: str = "auto") -> Inputs:
    """The items to classify below ``path`` (an image file, or a folder of the given kind)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path} not found; give an image folder, an EcoTaxa export or a folder of IFCB bins")
    if not path.is_dir() and not path.is_file():
        raise UserError(f"{path} is neither a folder nor a regular file (a broken link, a pipe or a device); "
                        "give an image folder, an image file, an EcoTaxa export or a folder of IFCB bins")
    decided_by = ""
    if kind == "auto":
        kind, decided_by = detect_kind(path)
    if kind != "folder" and not path.is_dir():
        raise UserError(f"{path} is not a folder; --input-type {kind} needs the folder that holds the data")
    inputs = Inputs(kind=kind, root=path, decided_by=decided_by)
    {"folder": list_folder, "ecotaxa": list_ecotaxa, "ifcb": list_ifcb}[kind](inputs)
    return inputs


def list_folder(inputs: Inputs) -> None:
    """Every image below the folder (the filter stage's walk, data/scan.py: links followed, each
    real folder once, hidden and non-image files counted as ignored)."""
    root = inputs.root
    if root.is_file():
        inputs.items.append(Item(id=readable(root.name), file=readable(root.name), path=str(root)))
        inputs.root = root.parent
        return
    scan = Scan(layout="image folder")
    collect_images(root, Path(), "", "", scan, visited=set(), follow_outside=True)
    items = [Item(id=c.path, file=c.path, path=str(root / c.path)) for c in scan.candidates]
    items += [Item(id=r["path"], file=r["path"], error="file name is not valid UTF-8; rename the file to classify it")
              for r in scan.rejected if r["kind"] == NAME_NOT_UTF8]
    for entry in scan.ignored:
        if entry["reason"] == BROKEN:
            items.append(Item(id=entry["path"], file=entry["path"], error=BROKEN))
        elif entry["files"]:
            reason = "not image files" if entry["reason"].startswith("not an image file") else entry["reason"]
            inputs.ignored[reason] += entry["files"]
    inputs.items.extend(sorted(items, key=lambda item: item.file))


def list_ecotaxa(inputs: Inputs) -> None:
    """Every object's main image of every table (labels and statuses ignored)."""
    rows, tables = ecotaxa.read_rows(inputs.root)
    seen: set[str] = set()
    for row in rows:
        if not row.main:
            inputs.ignored["secondary images of objects (img_rank)"] += 1
            continue
        error = (f"empty object_id ({row.where}); give the object an id" if not row.object_id
                 else f"empty img_file_name ({row.where})" if not row.values["img_file_name"].strip()
                 else "img_file_name leaves the export folder" if not row.path
                 else f"object_id listed again ({row.where})" if row.object_id in seen
                 else f"missing image (listed in {row.where})" if not (inputs.root / row.path).is_file() else "")
        seen.add(row.object_id)
        inputs.items.append(Item(id=row.object_id, file=row.path or row.values["img_file_name"], error=error,
                                 path=str(inputs.root / row.path) if row.path else "",
                                 sample=row.values.get("sample_id", "").strip()))
    inputs.ignored["EcoTaxa tables"] += len(tables)
    inputs.ignored["images listed in no table"] += ecotaxa.unlisted_images(inputs.root, {row.path for row in rows})


def list_ifcb(inputs: Inputs) -> None:
    root = inputs.root
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        rel_dir = Path(folder).relative_to(root).as_posix()
        for name in sorted(f for f in files if f.endswith(".adc")):
            b = ifcb.bin_of(Path(folder) / name)
            if b is not None:
                add_bin(inputs, b, rel_dir)
        add_bins_without_adc(inputs, Path(folder), files, rel_dir)
        inputs.ignored["other files"] += sum(1 for f in files if not f.endswith((".adc", ".hdr", ".roi"))
                                             or ifcb.schema_of(f[:-4]) is None)


def add_bins_without_adc(inputs: Inputs, folder: Path, files: list[str], rel_dir: str) -> None:
    """An error item for each bin that has a .roi or .hdr but no .adc (its ROIs cannot be found)."""
    lids = {f[:-4] for f in files if f.endswith((".roi", ".hdr")) and ifcb.schema_of(f[:-4])}
    for lid in sorted(lids - {f[:-4] for f in files if f.endswith(".adc")}):
        name = readable(f"{lid}.roi" if rel_dir == "." else f"{rel_dir}/{lid}.roi")
        inputs.items.append(Item(id=readable(lid), file=name, sample=readable(lid),
                                 error="incomplete bin: no .adc file beside the .roi/.hdr"))


def add_bin(inputs: Inputs, b: ifcb.Bin, rel_dir: str) -> None:
    """One item per ROI with an image; an error item for a bin or row that cannot be read."""
    name = readable(f"{b.lid}.roi" if rel_dir == "." else f"{rel_dir}/{b.lid}.roi")
    missing = ifcb.missing_files(b)
    if missing:
        inputs.items.append(Item(id=b.lid, file=name, sample=b.lid,
                                 error=f"incomplete bin: no .{' or .'.join(missing)} file beside the .adc"))
        return
    rois, bad = ifcb.read_adc(b)
    for number, why in bad:
        inputs.items.append(Item(id=ifcb.roi_id(b.lid, number), file=name, sample=b.lid, error=why))
    for roi in rois:
        if not roi.has_image:
            inputs.ignored["IFCB rows without an image (width or height 0)"] += 1
            continue
        inputs.items.append(Item(id=ifcb.roi_id(b.lid, roi.number), file=name, sample=b.lid,
                                 roi=(str(b.file("roi")), roi.start, roi.width, roi.height)))


def roi_pixels(item: Item, cfg: ImageParams = ImageParams()) -> np.ndarray:
    """An IFCB item's 8-bit greyscale pixels, exactly as stored in the ``.roi`` (its size checked
    against ``image.max_pixels`` before anything is read)."""
    assert item.roi is not None, "not an IFCB item"
    _, _, width, height = item.roi
    if width * height > cfg.max_pixels:
        raise BadImage("too large", f"{width}x{height} pixels > image.max_pixels ({cfg.max_pixels})")
    try:
        return ifcb.read_roi_pixels(*item.roi, max_pixels=cfg.max_pixels)
    except ifcb.IfcbError as err:
        raise BadImage("unreadable ROI", str(err)) from None


def load_item(item: Item, cfg: ImageParams, draft_size: int | None = None) -> Image.Image:
    """The item as an 8-bit RGB image (raises BadImage or OSError with the reason)."""
    if item.roi is None:
        return load_rgb(item.path, cfg, draft_size)
    pixels = roi_pixels(item, cfg)
    height, width = pixels.shape
    if min(width, height) < cfg.min_side:
        raise BadImage("too small", f"{width}x{height} has a side under image.min_side ({cfg.min_side})")
    return Image.fromarray(pixels).convert("RGB")  # 8-bit greyscale copied to 3 channels, as for files
