"""``base``: shared by every stage."""
from __future__ import annotations

import dataclasses

from plankton_transfer.params.core import check_range

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit


@dataclasses.dataclass(frozen=True)
class BaseParams:
    seed: int = 42

    def __post_init__(self) -> None:
        check_range("base.seed", self.seed, 0, MAX_SEED)
