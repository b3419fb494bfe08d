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
    interval_method: str  # what stats.interval_method used for balanced accuracy and macro-F1 here


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
    interval_method: str  # stats.interval_method as set; each split names the method it used
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


@dataclasses.dataclass(frozen=True)
class OpenSetScores:
    """One unknown score in the leave-classes-out runs: the mean over repeats, with intervals."""

    auroc: Estimate
    fpr95: Estimate  # unknown images kept as known when 95 % of the known are kept
    aupr: Estimate
    known_kept: Estimate  # at the validation threshold
    unknown_rejected: Estimate  # at the validation threshold
    bray_curtis_rejected: Estimate  # true against predicted composition, unknowns rejected


@dataclasses.dataclass(frozen=True)
class OpenSetSummary(Record):
    """The openset stage's summary (``metrics/openset/<model>/summary.json``)."""

    FORMAT = "plankton-transfer/openset"
    VERSION = 1
    REMAKE = "run dvc repro (the openset stage writes it again)"

    model: str
    model_fingerprint: str  # of the model whose detector this stage wrote
    score: str  # the score predict uses
    chosen_by: str  # how, in words
    validation_auroc: dict[str, float]  # per score: mean AUROC of the leave-classes-out run on validation data
    threshold: float  # of ``score``, on the model's own validation images
    val_known_kept: float  # known validation images kept at that threshold
    holdout: int
    repeats: int
    held_out: list[list[str]]  # the classes held out in each repeat
    known_images: int  # evaluated known images per repeat (test split of the known classes), mean
    unknown_images: int  # held-out images per repeat (all splits), mean
    bray_curtis_forced: Estimate  # composition error when every image is forced into a known class
    scores: dict[str, OpenSetScores]

    @property
    def chosen(self) -> OpenSetScores:
        return self.scores[self.score]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
