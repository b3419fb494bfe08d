"""``thresholds``: the per-class probability thresholds the train stage stores in each model file."""
from __future__ import annotations

import dataclasses

from plankton_transfer.params.core import check_range


@dataclasses.dataclass(frozen=True)
class ThresholdParams:
    target_precision: float = 0.95

    def __post_init__(self) -> None:
        check_range("thresholds.target_precision", self.target_precision, 0.0, 1.0, low_open=True)
