"""The letterbox, written once: fit an image into a square keeping its aspect ratio, and pad it
with its own border colour. Used by the preprocessing of every backbone in ``pad`` mode (Pillow
and tensor paths, data/preprocess.py) and by the near-duplicate check (data/leakage.py); it
needs only Pillow and numpy, so the split stage can use it without torch.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top) of an image fitted into a ``size`` square, as Pillow's
    ``ImageOps.pad(image, (size, size), centering=(0.5, 0.5))`` computes them: the longer side
    becomes ``size``, the other ``round(shorter / longer * size)``; centred with ``round``."""
    if width == height:
        return size, size, 0, 0
    if width > height:
        new_w, new_h = size, round(height / width * size)
    else:
        new_w, new_h = round(width / height * size), size
    return new_w, new_h, round((size - new_w) * 0.5), round((size - new_h) * 0.5)


def border_colour(pixels: np.ndarray) -> tuple[int, int, int]:
    """The padding colour: per channel, the median (numpy.median) of the outermost pixel ring,
    taken as the first row, the last row, the first column and the last column in that order
    (the four corner pixels thus count twice), truncated to an integer."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0))


class Letterbox:
    """Resize to fit a ``size`` square, keeping the aspect ratio, and pad with the border colour."""

    def __init__(self, size: int, interpolation: str) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        new_w, new_h, left, top = letterbox_geometry(img.width, img.height, self.size)
        canvas = Image.new("RGB", (self.size, self.size), border_colour(np.asarray(img)))
        if min(new_w, new_h) > 0:
            canvas.paste(img.resize((new_w, new_h), resample=PIL_INTERPOLATION[self.interpolation]), (left, top))
        return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def letterbox_image(img: Image.Image, size: int, resample: int) -> Image.Image:
    """``img`` (RGB) fitted into a ``size`` square and padded with its border colour: Pillow's
    ``ImageOps.pad(img, (size, size), method=resample, color=border_colour(img))`` exactly."""
    new_w, new_h, left, top = letterbox_geometry(img.width, img.height, size)
    canvas = Image.new("RGB", (size, size), border_colour(np.asarray(img)))
    if min(new_w, new_h) > 0:
        canvas.paste(img.resize((new_w, new_h), resample=resample), (left, top))
    return canvas
