"""``data``: where the labelled images are."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataParams:
    raw: str = "data/flowcam-sample"

    def __post_init__(self) -> None:
        if not self.raw.strip():
            raise UserError("params.yaml: data.raw is empty; set it to your image folder")
