"""What the evaluate stage hands on, as typed records: the evaluation summary of one model
(``metrics/evaluate/<model>/summary.json``: every metric of the val and test splits with its
interval, calibration, abundance, the review trade-off) and its run record (``run.json``: how
the numbers were made). Compare, the model card and ``plankton-experiments`` read these.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from plankton_transfer.evaluation.metrics import METRICS
from plankton_transfer.models.provenance import DataInfo, InputRecipe, WeightsInfo
from plankton_transfer.records import Record


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A number and, where it has one, its interval."""

    value: float
    low: float | None = None
    high: float | None = None
    note: str = ""  # why an interval is absent or does not contain the value

    def shown(self, key: str) -> str:
        return METRICS[key].show(self.value, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class SplitScores:
    images: int
    metrics: dict[str, Estimate]  # a key of evaluation/metrics.py METRICS -> its estimate


@dataclasses.dataclass(frozen=True)
class CalibrationScores:
    temperature: float
    val_loss_before: float
    val_loss_after: float
    test_loss_before: float
    test_loss_after: float
    test_ece_before: Estimate
    test_ece_after: Estimate
    ece_change: Estimate  # after - before, with a paired bootstrap interval
    verdict: str  # "improved" | "not distinguishable" | "worse", from ece_change's interval


@dataclasses.dataclass(frozen=True)
class ReviewScores:
    """Images accepted without review under the model's per-class thresholds."""

    split: str
    accepted: int
    images: int
    precision: Estimate | None  # of the accepted images (Wilson interval); None when none was accepted
    classes_without_threshold: list[str]


@dataclasses.dataclass(frozen=True)
class EvaluationSummary(Record):
    FORMAT = "plankton-transfer/evaluation"
    VERSION = 1
    REMAKE = "run dvc repro (the evaluate stage writes it again)"

    model: str
    model_fingerprint: str  # ModelFile.fingerprint() of the model these numbers belong to
    pretrained: bool
    weights: str  # the weights' description
    parameters: int  # backbone + head
    epochs: int
    best_epoch: int
    lr: float
    convergence_warning: str  # "" when the best epoch is well under train.max_epochs
    splits: dict[str, SplitScores]  # "val", "test"
    interval_method: str
    confidence: float
    calibration: CalibrationScores
    abundance: dict[str, Any]
    review: list[ReviewScores]

    def estimate(self, split: str, key: str) -> Estimate:
        return self.splits[split].metrics[key]


@dataclasses.dataclass(frozen=True)
class RunRecord(Record):
    """Everything that determined one model's numbers, for reproducing them."""

    FORMAT = "plankton-transfer/run"
    VERSION = 1
    REMAKE = "run dvc repro (the evaluate stage writes it again)"

    model: str
    model_fingerprint: str
    backbone: str
    weights: WeightsInfo
    input: InputRecipe
    classes: tuple[str, ...]
    data: DataInfo
    train_params: dict[str, Any]
    seed: int
    deterministic_algorithms: bool
    lr_sweep_best_val_loss: dict[str, float]
    convergence_warning: str  # "" when the best epoch is well under train.max_epochs
    timing: dict[str, float | None]  # train_seconds, extract_seconds, extract_images_per_s
    extract_environment: dict[str, Any]
    train_environment: dict[str, Any]
    train_features: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float  # over folds, ddof 1 (0 for one fold)


@dataclasses.dataclass(frozen=True)
class CrossvalSummary(Record):
    FORMAT = "plankton-transfer/crossval"
    VERSION = 1
    REMAKE = "run dvc repro (the crossval stage writes it again)"

    model: str
    folds: int
    repeats: int
    images: int
    metrics: dict[str, MeanSd]  # keys of evaluation/metrics.py CROSSVAL_METRICS


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
