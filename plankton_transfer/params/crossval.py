"""``crossval``: repeated stratified k-fold over all filtered images, on the cached features."""
from __future__ import annotations

import dataclasses

from plankton_transfer.params.core import check_range


@dataclasses.dataclass(frozen=True)
class CrossvalParams:
    folds: int = 5
    repeats: int = 2
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_range("crossval.folds", self.folds, 2, 50)
        check_range("crossval.repeats", self.repeats, 1, 100)
        check_range("crossval.val_fraction", self.val_fraction, 0.0, 0.5, low_open=True)
