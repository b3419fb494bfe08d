"""Reading Imaging FlowCytobot (IFCB) raw data: bins of ``.hdr``/``.adc``/``.roi`` files.

Written after WHOI's pyifcb (``ifcb.data``), which no maintained PyPI package offers for
both instrument generations; the generation is told from the bin name, as pyifcb does:

- ``IFCB5_2012_028_081515`` (IFCB1-6, schema 1): the ``.adc`` is a header-less CSV, one row
  per ROI; 0-based columns 11 = ROI width, 12 = ROI height, 13 = start byte in the ``.roi``.
  Rows end with a trailing comma, and one trigger can have two rows (two ROIs; WHOI's
  dashboard stitches such pairs, this reader keeps them as the raw ROIs they are);
- ``D20130526T095207_IFCB013`` (IFCB7+, schema 2): the ``.hdr`` has ``Key: value`` lines, among
  them ``ADCFileFormat:`` naming the ``.adc`` columns; columns ``RoiWidth``/``RoiHeight``/
  ``StartByte`` (15/16/17 when the header does not name them).

The ``.roi`` is the concatenation of 8-bit greyscale ROIs, each ``height`` rows of ``width``
bytes starting at its start byte, which is used as given, a 0-based file offset, exactly as
pyifcb reads it (IFCB1-6 files begin with one byte before the first ROI, whose start byte is 1).
Rows with width or height 0 have no image. A ROI's number is its 1-based row in the ``.adc``
(pyifcb's target number), its id ``<bin>_<number, 5 digits>`` as WHOI's dashboard writes it.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

V1_NAME = re.compile(r"^IFCB\d+_\d{4}_\d{3}_\d{6}$")
V2_NAME = re.compile(r"^D\d{8}T\d{6}_IFCB\d+$")
V1_COLUMNS = (11, 12, 13)  # width, height, start byte
V2_COLUMNS = (15, 16, 17)
V2_NAMES = ("roiwidth", "roiheight", "startbyte")  # ADCFileFormat names, lower case without punctuation
MAX_SIDE = 2**31 - 1  # more pixels on one side than Pillow can hold in a whole image
MAX_OFFSET = 2**63 - 1  # the largest file offset


class IfcbError(Exception):
    """A bin or ROI that cannot be read; ``str(err)`` says why."""


@dataclasses.dataclass(frozen=True)
class Bin:
    lid: str  # the bin's name, e.g. D20130526T095207_IFCB013
    base: Path  # the three files' path without extension
    schema: int  # 1 (IFCB1-6) or 2 (IFCB7+)

    def file(self, extension: str) -> Path:
        return self.base.with_name(f"{self.base.name}.{extension}")


@dataclasses.dataclass(frozen=True)
class Roi:
    number: int  # 1-based row of the .adc
    width: int
    height: int
    start: int  # byte offset in the .roi

    @property
    def has_image(self) -> bool:
        return self.width > 0 and self.height > 0


def schema_of(name: str) -> int | None:
    """1 or 2 from a bin name (as pyifcb's identifiers), None if it is not an IFCB bin name."""
    return 1 if V1_NAME.match(name) else 2 if V2_NAME.match(name) else None


def roi_id(lid: str, number: int) -> str:
    return f"{lid}_{number:05d}"


def bin_of(adc: Path) -> Bin | None:
    """The bin an ``.adc`` file belongs to, or None if its name is not an IFCB bin name."""
    schema = schema_of(adc.stem)
    return None if schema is None else Bin(lid=adc.stem, base=adc.with_suffix(""), schema=schema)


def missing_files(b: Bin) -> list[str]:
    return [ext for ext in ("hdr", "adc", "roi") if not b.file(ext).is_file()]


def read_header(path: Path) -> dict[str, str]:
    """``Key: value`` lines of a ``.hdr`` (values stripped; lines without ``: `` skipped)."""
    values = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            values[key.strip()] = value.strip()
    return values


def adc_columns(b: Bin) -> tuple[int, int, int]:
    """0-based ``.adc`` columns of ROI width, height and start byte for this bin."""
    if b.schema == 1:
        return V1_COLUMNS
    header = read_header(b.file("hdr")).get("ADCFileFormat", "")
    names = [re.sub(r"[^a-z0-9]", "", n.lower()) for n in header.split(",")]
    if all(name in names for name in V2_NAMES):
        return tuple(names.index(name) for name in V2_NAMES)  # type: ignore[return-value]
    return V2_COLUMNS


def read_adc(b: Bin) -> tuple[list[Roi], list[tuple[int, str]]]:
    """Every ROI row of the bin's ``.adc`` and the rows that could not be read (number, why)."""
    columns = adc_columns(b)
    rois, bad = [], []
    lines = b.file("adc").read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate((x for x in lines if x.strip()), start=1):
        cells = [c.strip() for c in line.split(",")]
        try:
            width, height, start = (int(float(cells[i])) for i in columns)
        except (IndexError, ValueError, OverflowError):  # a missing cell, text, nan, inf
            bad.append((number, f"{b.lid}.adc row {number} has no ROI width, height and start byte in columns "
                                f"{', '.join(map(str, columns))}"))
            continue
        if width < 0 or height < 0:
            bad.append((number, f"{b.lid}.adc row {number}: negative ROI size {width}x{height}"))
            continue
        if max(width, height) > MAX_SIDE or start > MAX_OFFSET:  # e.g. 1e300: named as written, not as 301 digits
            what = (f"ROI size {cells[columns[0]]}x{cells[columns[1]]} is beyond any image" if max(width, height) >
                    MAX_SIDE else f"start byte {cells[columns[2]]} is beyond any file")
            bad.append((number, f"{b.lid}.adc row {number}: {what} (a damaged row)"))
            continue
        rois.append(Roi(number=number, width=width, height=height, start=start))
    return rois, bad


def read_roi_pixels(roi_file: str | Path, start: int, width: int, height: int,
                    max_pixels: int | None = None) -> np.ndarray:
    """The ROI's 8-bit pixels, ``height`` rows of ``width`` bytes from byte ``start``.

    The size the ``.adc`` claims is checked against ``max_pixels`` (``image.max_pixels``) and
    against the ``.roi`` file's length before anything is read: a damaged row claiming
    400000 x 400000 pixels costs nothing."""
    if width <= 0 or height <= 0 or start < 0:
        raise IfcbError(f"no image ({width}x{height} at byte {start})")
    if max_pixels is not None and width * height > max_pixels:
        raise IfcbError(f"{width}x{height} = {width * height} pixels > image.max_pixels ({max_pixels})")
    size = Path(roi_file).stat().st_size
    if start + width * height > size:
        raise IfcbError(f"{Path(roi_file).name} ends before this ROI's {width}x{height} bytes at byte {start} "
                        f"(the file has {size} bytes: truncated .roi or a damaged .adc row)")
    with open(roi_file, "rb") as f:
        f.seek(start)
        data = f.read(width * height)
    if len(data) < width * height:
        raise IfcbError(f"{Path(roi_file).name} ends before this ROI's {width}x{height} bytes at byte {start} "
                        "(truncated .roi)")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width)
