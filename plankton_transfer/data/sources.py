"""What prediction classifies: an image folder, an unzipped EcoTaxa export or a folder of IFCB bins.

Each input becomes a list of :class:`Item` (one per image or ROI, with an id for the output)
plus counts of what was left out by rule. Folders follow the filter stage's rules: searched
recursively, links followed (each folder once, so loops end), hidden files and folders
(``.DS_Store``, ``.ipynb_checkpoints``, ``__MACOSX``) and non-image files left out and counted.
A file that cannot be used (a name that is not UTF-8, a broken link, a missing image, an
unreadable ROI row) becomes an item with its error, so it gets its own row in the results
and never stops the others.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import numpy as np
from PIL import Image

from plankton_transfer.data import ecotaxa, ifcb
from plankton_transfer.data.images import BadImage, is_image_name, load_rgb
from plankton_transfer.data.scan import is_hidden, is_utf8
from plankton_transfer.errors import UserError
from plankton_transfer.params import ImageParams

KINDS = {"folder": "image folder", "ecotaxa": "EcoTaxa export", "ifcb": "IFCB bins"}


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


def readable(text: str) -> str:
    """A file name as UTF-8 text; bytes that are not UTF-8 shown as ``\\xe4`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def detect_kind(path: Path) -> str:
    """``ecotaxa`` if ``path`` holds ``ecotaxa_*.tsv`` tables, ``ifcb`` if it holds IFCB ``.adc``
    files, else ``folder``."""
    if not path.is_dir():
        return "folder"
    has_tables, has_bins = False, False
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        has_tables |= any(ecotaxa.TABLE_NAME.match(f) for f in files)
        has_bins |= any(f.endswith(".adc") and ifcb.schema_of(f[:-4]) for f in files)
    if has_tables and has_bins:
        raise UserError(f"{path} holds both EcoTaxa tables and IFCB bins; choose one with --input-type ecotaxa|ifcb")
    return "ecotaxa" if has_tables else "ifcb" if has_bins else "folder"


def list_inputs(path: str | Path, kind: str = "auto") -> Inputs:
    """The items to classify below ``path`` (an image file, or a folder of the given kind)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; give an image folder, an EcoTaxa export or a folder of IFCB bins")
    kind = detect_kind(path) if kind == "auto" else kind
    if kind != "folder" and not path.is_dir():
        raise UserError(f"{path} is not a folder; --input-type {kind} needs the folder that holds the data")
    inputs = Inputs(kind=kind, root=path)
    {"folder": list_folder, "ecotaxa": list_ecotaxa, "ifcb": list_ifcb}[kind](inputs)
    return inputs


def list_folder(inputs: Inputs) -> None:
    root = inputs.root
    if root.is_file():
        inputs.items.append(Item(id=readable(root.name), file=readable(root.name), path=str(root)))
        inputs.root = root.parent
        return
    walk_folder(inputs, root, "", set())


def walk_folder(inputs: Inputs, folder: Path, rel: str, visited: set) -> None:
    """Images below ``folder`` in name order, following links, each real folder once."""
    real = os.stat(folder)
    if (real.st_dev, real.st_ino) in visited:
        return  # a link back to a folder already searched
    visited.add((real.st_dev, real.st_ino))
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = f"{rel}{entry.name}"
        if is_hidden(entry.name):
            files = sum(len(n) for _, _, n in os.walk(entry.path)) if entry.is_dir(follow_symlinks=False) else 1
            inputs.ignored["hidden files and folders"] += files
        elif entry.is_dir():
            walk_folder(inputs, Path(entry.path), f"{child}/", visited)
        elif not entry.is_file():
            inputs.items.append(Item(id=readable(child), file=readable(child), error="broken link or special file"))
        elif not is_image_name(entry.name):
            inputs.ignored["not image files"] += 1
        elif not is_utf8(child):
            inputs.items.append(Item(id=readable(child), file=readable(child), path=entry.path,
                                     error="file name is not valid UTF-8; rename the file to classify it"))
        else:
            inputs.items.append(Item(id=child, file=child, path=entry.path))


def list_ecotaxa(inputs: Inputs) -> None:
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
    inputs.ignored["images listed in no table"] += unlisted_images(inputs.root, {row.path for row in rows})


def unlisted_images(root: Path, listed: set[str]) -> int:
    """Image files in the export folder that no table row names (counted, so none vanish unseen)."""
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        rel = Path(folder).relative_to(root)
        count += sum(1 for f in files if not is_hidden(f) and is_image_name(f) and (rel / f).as_posix() not in listed)
    return count


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


def roi_pixels(item: Item) -> np.ndarray:
    """An IFCB item's 8-bit greyscale pixels, exactly as stored in the ``.roi``."""
    assert item.roi is not None, "not an IFCB item"
    try:
        return ifcb.read_roi_pixels(*item.roi)
    except ifcb.IfcbError as err:
        raise BadImage("unreadable ROI", str(err)) from None


def load_item(item: Item, cfg: ImageParams, draft_size: int | None = None) -> Image.Image:
    """The item as an 8-bit RGB image (raises BadImage or OSError with the reason)."""
    if item.roi is None:
        return load_rgb(item.path, cfg, draft_size)
    pixels = roi_pixels(item)
    height, width = pixels.shape
    if min(width, height) < cfg.min_side:
        raise BadImage("too small", f"{width}x{height} has a side under image.min_side ({cfg.min_side})")
    if width * height > cfg.max_pixels:
        raise BadImage("too large", f"{width}x{height} pixels > image.max_pixels ({cfg.max_pixels})")
    return Image.fromarray(pixels).convert("RGB")  # 8-bit greyscale copied to 3 channels, as for files
