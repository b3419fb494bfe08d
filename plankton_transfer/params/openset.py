"""``openset``: flagging images of no trained class as ``unknown`` (the openset stage, predict)."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_choice, check_range

UNKNOWN_SCORES = ("msp", "energy", "mahalanobis", "vim")  # evaluation/openset.py defines each


@dataclasses.dataclass(frozen=True)
class OpenSetParams:
    holdout: int = 1  # classes held out as unknown in each leave-classes-out repeat
    repeats: int = 6  # repeats (each holds out other classes, in a seeded order)
    scores: tuple[str, ...] = UNKNOWN_SCORES  # scores measured
    score: str = "auto"  # the score prediction uses: auto (best validation AUROC) or one of scores
    target_known_kept: float = 0.95  # the threshold keeps this fraction of known validation images
    resamples: int = 1000  # bootstrap draws of the intervals

    def __post_init__(self) -> None:
        check_range("openset.holdout", self.holdout, 1, 1000)
        check_range("openset.repeats", self.repeats, 1, 100)
        if not self.scores or len(set(self.scores)) != len(self.scores):
            raise UserError(f"params.yaml: openset.scores is {list(self.scores)}; list distinct scores from "
                            f"{', '.join(UNKNOWN_SCORES)}")
        for name in self.scores:
            check_choice("openset.scores", name, UNKNOWN_SCORES)
        check_choice("openset.score", self.score, ("auto", *self.scores))
        check_range("openset.target_known_kept", self.target_known_kept, 0.5, 1.0)
        check_range("openset.resamples", self.resamples, 100, 100_000)
