"""``train``: the head's training protocol (the study's by default); crossval and the open-set
stage use the same protocol."""
from __future__ import annotations

import dataclasses

from plankton_transfer.errors import UserError
from plankton_transfer.params.core import check_range

MAX_LEARNING_RATES = 32  # heads trained at once per fold; memory grows with it


@dataclasses.dataclass(frozen=True)
class TrainParams:
    lr: float | tuple[float, ...] = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 24
    max_epochs: int = 100
    patience: int = 20

    @property
    def lrs(self) -> list[float]:
        return [float(v) for v in (self.lr if isinstance(self.lr, tuple) else (self.lr,))]

    def __post_init__(self) -> None:
        if not self.lrs:
            raise UserError("params.yaml: train.lr is an empty list; give a number or a list of numbers")
        if len(self.lrs) > MAX_LEARNING_RATES:
            raise UserError(f"params.yaml: train.lr lists {len(self.lrs)} rates; give at most {MAX_LEARNING_RATES}")
        for lr in self.lrs:
            check_range("train.lr", lr, 0.0, 100.0, low_open=True)
        check_range("train.momentum", self.momentum, 0.0, 1.0)
        check_range("train.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("train.batch_size", self.batch_size, 1, 65536)
        check_range("train.max_epochs", self.max_epochs, 1, 100_000)
        check_range("train.patience", self.patience, 1, 100_000)
