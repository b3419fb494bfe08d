"""Opening real-world plankton images: validation and conversion to 8-bit RGB.

One loader, :func:`load_rgb`, is used by the filter stage (to validate every file) and by
the extract stage (to feed the backbone), so what was validated is what is used.

Rules, each applied on purpose (see docs/data.md):
- the header is read first: images over ``image.max_pixels`` (decompression bombs) or with
  a side under ``image.min_side`` are rejected before any pixel is decoded, and a file that is
  not an image at all is rejected after reading its first bytes only (a 3 GB file named
  ``.jpg`` is never read into memory); the content hash is computed in a streaming way;
- Pillow's own bomb limit (``Image.MAX_IMAGE_PIXELS``) follows ``image.max_pixels``, so
  raising the param above Pillow's default really accepts larger images;
- the whole image is decoded, so a truncated JPEG (which passes ``verify()``) is rejected;
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set;
- multi-frame GIF/TIFF: the first frame is used, and the file is reported as converted;
- EXIF orientation is applied;
- 16-bit and 32-bit greyscale (``I;16``, ``I;16B``, ``I``, ``F``) are stretched linearly from
  the image's own minimum..maximum to 0..255 (Pillow's ``convert("RGB")`` would clip them to
  near-white; a fixed >>8 shift would leave 10-14 bit camera data almost black);
- transparency is blended onto ``image.background`` instead of turning black;
- CMYK, palette, YCbCr, LAB, HSV and 1-bit images are converted by Pillow to RGB;
- 8-bit greyscale is copied to 3 channels (lossless, so not reported as a conversion).
"""
from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import BinaryIO

import imagehash
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from plankton_transfer.params.image import ImageParams

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"}
)
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
EXIF_ORIENTATION_TAG = 0x0112


class BadImage(Exception):
    """A file that cannot be used as an image; ``str(err)`` is the reason for the report."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """Outcome of validating one file."""

    sha256: str
    ok: bool
    reason: str = ""  # why it was rejected
    kind: str = ""  # short rejection category, for counts
    conversions: tuple[str, ...] = ()
    width: int = 0
    height: int = 0
    format: str = ""  # Pillow's name of the file format (JPEG, PNG, TIFF, ...)
    phash: str = ""  # perceptual hash (16 hex digits), for near-duplicates across splits


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def check_image(path: str | Path, cfg: ImageParams) -> ImageCheck:
    """Check the header, decode the whole image with :func:`decode_rgb`, then hash the file.

    Memory stays bounded by the decoded image (at most ``image.max_pixels``), whatever the
    size of the file: nothing is read in one piece.
    """
    try:
        with Path(path).open("rb") as f:
            try:
                img, conversions, fmt = decode_rgb(f, cfg)
            except BadImage as err:  # not hashed: only usable images are compared by content
                return ImageCheck(sha256="", ok=False, reason=str(err), kind=err.kind)
            digest = file_sha256(f)
    except OSError as err:  # permissions, a file vanishing, an I/O error on a failing disk
        return ImageCheck(sha256="", ok=False, reason=f"unreadable file: {err.strerror or err}", kind="unreadable file")
    return ImageCheck(sha256=digest, ok=True, conversions=tuple(conversions), width=img.width, height=img.height,
                      format=fmt, phash=perceptual_hash(img))


def perceptual_hash(img: Image.Image) -> str:
    """imagehash's 64-bit DCT hash of the decoded image: resized or re-encoded copies of an image
    differ from it in a few bits only (plankton_transfer/data/leakage.py)."""
    return str(imagehash.phash(img))


def file_sha256(f: BinaryIO) -> str:
    """sha256 of a whole open file, read in chunks from its start."""
    f.seek(0)
    return hashlib.file_digest(f, "sha256").hexdigest()


def load_rgb(path: str | Path, cfg: ImageParams, draft_size: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, applying the rules in the module docstring.

    ``draft_size`` lets JPEG decoding shrink by a power of two while staying at least that
    many pixels on the short side, which makes huge scans cheap to feed to a 224-px model.
    """
    with Path(path).open("rb") as f:
        img, _, _ = decode_rgb(f, cfg, draft_size)
    return img


def decode_rgb(f: BinaryIO, cfg: ImageParams, draft_size: int | None = None) -> tuple[Image.Image, list[str], str]:
    """Decode an open image file to RGB; returns the image, the conversions applied and the format."""
    assert not ImageFile.LOAD_TRUNCATED_IMAGES, "truncated images must be rejected, not padded"
    img = open_checked_header(f, cfg)
    fmt, conversions = img.format or "", []
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        img.seek(0)
        conversions.append(f"multi-frame ({frames} frames): first frame used")
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage("truncated or corrupt", str(err)) from None
    img = apply_exif_orientation(img, conversions)
    return to_rgb(img, cfg.background, conversions), conversions, fmt


def open_checked_header(f: BinaryIO, cfg: ImageParams) -> Image.Image:
    """Open lazily (header only) and refuse absurd sizes before decoding any pixel."""
    # Pillow refuses images over 2 x MAX_IMAGE_PIXELS by itself; image.max_pixels is the limit here
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    f.seek(0)
    if not f.read(1):
        raise BadImage("empty file", "0 bytes")
    f.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f)
    except Image.DecompressionBombError:
        raise BadImage("too large", f"more than twice image.max_pixels ({cfg.max_pixels}) pixels; raise "
                                    "image.max_pixels to accept it") from None
    except UnidentifiedImageError:
        raise BadImage("not an image", "Pillow cannot identify the file's format") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage("truncated or corrupt", f"header: {err}") from None
    width, height = img.size
    if width * height > cfg.max_pixels:
        raise BadImage(
            "too large",
            f"{width}x{height} = {width * height} pixels > image.max_pixels ({cfg.max_pixels}); "
            "raise image.max_pixels to accept it",
        )
    if min(width, height) < cfg.min_side:
        raise BadImage("too small", f"{width}x{height} has a side under image.min_side ({cfg.min_side})")
    return img


def apply_exif_orientation(img: Image.Image, conversions: list[str]) -> Image.Image:
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError):  # a broken EXIF block is not a broken image
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        conversions.append(f"EXIF orientation {orientation} applied")
        return ImageOps.exif_transpose(img)
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int], conversions: list[str]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, recording what was not a plain copy."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "L":
        return img.convert("RGB")
    if mode in HIGH_BIT_DEPTH_MODES:
        conversions.append(f"{mode} greyscale stretched min..max to 8-bit")
        return stretch_to_8bit(img).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "P+transparency"
    if img.mode in ALPHA_MODES:
        conversions.append(f"{mode} transparency flattened onto background {background}")
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as err:
        raise BadImage("unsupported mode", f"{mode}: {err}") from None
    conversions.append(f"{mode} converted to RGB")
    return rgb


def stretch_to_8bit(img: Image.Image) -> Image.Image:
    """Map a high-bit-depth greyscale image linearly from its min..max onto 0..255."""
    values = np.asarray(img, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise BadImage("unusable pixels", "no finite pixel values")
    low, high = float(finite.min()), float(finite.max())
    scaled = np.zeros_like(values) if high == low else (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
