"""``pretrained``: where the extract stage finds ImageNet weights (never the network)."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_choice


@dataclasses.dataclass(frozen=True)
class PretrainedParams:
    on_missing: str = "random"
    dir: str = "data/pretrained"

    def __post_init__(self) -> None:
        check_choice("pretrained.on_missing", self.on_missing, ("random", "error"))
        if not self.dir.strip():
            raise UserError("params.yaml: pretrained.dir is empty; the default is data/pretrained")
