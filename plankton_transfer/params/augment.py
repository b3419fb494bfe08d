"""``augment``: how the fine-tuning stage augments its training images (never the validation
or test images). Fitted to plankton: organisms have no up, so any rotation and both flips;
mild scale and brightness; no colour changes by default (greyscale instruments)."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_range


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    rotate: bool = True
    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.9, 1.1)
    colour: bool = False

    def __post_init__(self) -> None:
        for key, (low, high), limit in (("scale", self.scale, (0.25, 4.0)), ("brightness", self.brightness, (0.0, 4.0))):
            check_range(f"augment.{key}", low, *limit)
            check_range(f"augment.{key}", high, *limit)
            if low > high:
                raise UserError(f"params.yaml: augment.{key} is [{low}, {high}]; give [low, high] with low <= high, "
                                "e.g. [0.9, 1.1]")
