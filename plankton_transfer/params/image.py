"""``image``: how image files are validated and opened (filter, extract, and predict through
the model file, which stores this section)."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_range

PILLOW_PIXEL_CEILING = 2**31 - 1  # Pillow cannot address more pixels in one image


@dataclasses.dataclass(frozen=True)
class ImageParams:
    max_pixels: int = 50_000_000
    min_side: int = 4
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        check_range("image.max_pixels", self.max_pixels, 1, PILLOW_PIXEL_CEILING)
        check_range("image.min_side", self.min_side, 1)
        if not all(0 <= v <= 255 for v in self.background):
            raise UserError(f"params.yaml: image.background is {list(self.background)}; use three integers 0-255")
