"""The openset stage's work for one model (docs/open-set.md): how well each unknown score
separates classes the head never saw, measured by leave-classes-out on the cached features,
and the detector predict uses.

1. Choose the score (``openset.score: auto``): leave-classes-out evaluated on the validation
   split only (evaluation/openset.py ``choose_default_score``: highest mean AUROC); the test
   split is not read for this.
2. Report every score: the same held-out sets (their heads trained once), evaluated on the
   known classes' test images against every image of the held-out classes, with intervals.
3. Fit the detector of the chosen score on the model itself: its training features, its head
   and temperature; its threshold keeps ``openset.target_known_kept`` of the model's
   validation images (models/unknown.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.data.features import load_split
from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.openset import LeaveClassesOut, choose_default_score, leave_classes_out
from plankton_transfer.evaluation.summary import Estimate, OpenSetScores, OpenSetSummary
from plankton_transfer.models.heads import train_linear_head
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.unknown import UnknownDetector, fit_detector
from plankton_transfer.params.openset import OpenSetParams
from plankton_transfer.params.train import TrainParams

DIGITS = 4
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class OpenSetResult:
    summary: OpenSetSummary
    repeats: pd.DataFrame  # one row per repeat and score
    detector: UnknownDetector


def estimate(row: pd.Series, key: str) -> Estimate:
    return Estimate(round(float(row[key]), DIGITS), round(float(row[f"{key}_lo"]), DIGITS),
                    round(float(row[f"{key}_hi"]), DIGITS))


def head_trainer(train_cfg: TrainParams, seed: int):
    """evaluation/openset.py's TrainHead: the train stage's protocol on the known classes."""
    def train(x_train, y_train, x_val, y_val):
        head = train_linear_head(x_train, y_train, x_val, y_val, int(max(y_train.max(), y_val.max())) + 1,
                                 train_cfg, seed)
        return head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    return train


def all_features(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cached row (float32), its label and its split."""
    parts = [load_split(folder, s) for s in SPLITS]
    x = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(int)
    split = np.concatenate([np.full(len(p[1]), s) for p, s in zip(parts, SPLITS)])
    return x, y, split


def check_holdout(cfg: OpenSetParams, y: np.ndarray, split: np.ndarray) -> None:
    present = len(np.unique(y[split == "train"]))
    if cfg.holdout > present - 2:
        raise UserError(f"params.yaml: openset.holdout is {cfg.holdout}, but the training split has {present} "
                        f"classes: holding out that many leaves fewer than 2 known; use at most {max(present - 2, 0)}")


def run_openset(model: ModelFile, features: Path, cfg: OpenSetParams, train_cfg: TrainParams,
                seed: int) -> OpenSetResult:
    x, y, split = all_features(features)
    check_holdout(cfg, y, split)
    train_head, heads = head_trainer(train_cfg, seed), {}
    common = dict(n_holdout=cfg.holdout, repeats=cfg.repeats, seed=seed, target_known_kept=cfg.target_known_kept,
                  scores=cfg.scores, n_boot=cfg.resamples, class_names=list(model.classes), heads=heads)
    on_val = leave_classes_out(x, y, split, train_head, evaluate_on="val", **common)
    validation_auroc = {r.score: round(float(r.auroc), DIGITS) for r in on_val.table.itertuples()}
    if cfg.score == "auto":
        score = choose_default_score(on_val)
        chosen_by = ("auto: the highest mean AUROC of leave-classes-out on the validation split "
                     f"({cfg.repeats} repeats holding out {cfg.holdout} class(es) each)")
    else:
        score, chosen_by = cfg.score, "openset.score in params.yaml"
    on_test = leave_classes_out(x, y, split, train_head, evaluate_on="test", **common)
    detector = fit_detector(model, (x[split == "train"], y[split == "train"]), (x[split == "val"], y[split == "val"]),
                            score, chosen_by, cfg.target_known_kept)
    return OpenSetResult(summary(model, detector, on_test, validation_auroc, cfg), on_test.repeats.round(DIGITS),
                         detector)


def summary(model: ModelFile, detector: UnknownDetector, run: LeaveClassesOut, validation_auroc: dict[str, float],
            cfg: OpenSetParams) -> OpenSetSummary:
    table = run.table.set_index("score")
    scores = {name: OpenSetScores(**{key: estimate(row, key) for key in (
        "auroc", "fpr95", "aupr", "known_kept", "unknown_rejected", "bray_curtis_rejected")})
        for name, row in table.iterrows()}
    first = table.iloc[0]
    per_repeat = run.repeats.drop_duplicates("repeat")
    return OpenSetSummary(
        model=model.name, model_fingerprint=detector.model_fingerprint, score=detector.score,
        chosen_by=detector.chosen_by, validation_auroc=validation_auroc, threshold=round(detector.threshold, 6),
        val_known_kept=round(detector.val_known_kept, DIGITS), holdout=cfg.holdout, repeats=cfg.repeats,
        held_out=run.settings["held_out"], known_images=int(round(per_repeat["known_images"].mean())),
        unknown_images=int(round(per_repeat["unknown_images"].mean())),
        bray_curtis_forced=estimate(first, "bray_curtis_forced"), scores=scores)
