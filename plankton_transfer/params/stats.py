"""``stats``: how uncertainty and calibration are reported (evaluate, crossval, compare)."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_choice, check_range

INTERVAL_METHODS = ("auto", "pooled", "posterior", "bootstrap", "pooled-pivot")  # evaluation/intervals.py METHODS


@dataclasses.dataclass(frozen=True)
class StatsParams:
    confidence: float = 0.95
    interval_method: str = "auto"
    resamples: int = 2000
    calibration_bins: int = 15

    def __post_init__(self) -> None:
        check_choice("stats.interval_method", self.interval_method, INTERVAL_METHODS)
        check_range("stats.confidence", self.confidence, 0.0, 1.0, low_open=True)
        if self.confidence >= 1:
            raise UserError(f"params.yaml: stats.confidence is {self.confidence}; it must be below 1, e.g. 0.95")
        check_range("stats.resamples", self.resamples, 100, 100_000)
        check_range("stats.calibration_bins", self.calibration_bins, 1, 100)
