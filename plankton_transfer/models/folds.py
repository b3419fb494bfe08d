"""Folds and batched head training for cross-validation (plankton_transfer/models/crossval.py).

Every filtered image (train, val and test splits together) is in exactly one fold's test part
per repeat. In each fold the head is trained with the train stage's protocol
(plankton_transfer/models/heads.py: SGD with momentum, shuffled mini-batches, early stopping
on validation cross-entropy with patience, best epoch kept, the best of ``train.lr`` on
validation loss, then temperature scaling on the same validation part); the validation part
is carved from the fold's training part (stratified), never from its test part.

Folds are scikit-learn's ``RepeatedStratifiedKFold``, or ``StratifiedGroupKFold`` per repeat
when the split stage grouped images (``split.group``), so related images never straddle a
fold's training and test parts either.

The folds' heads are trained by the project's one trainer (models/heads.py: fit_heads), all
folds at once.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold, StratifiedKFold

from plankton_transfer.errors import UserError
from plankton_transfer.models.heads import RowGroup
from plankton_transfer.params.crossval import CrossvalParams


@dataclasses.dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    train: np.ndarray  # row indices
    val: np.ndarray
    test: np.ndarray

    @property
    def rows(self) -> RowGroup:
        """The rows its heads train on and are early-stopped by."""
        return RowGroup(self.train, self.val)


def make_folds(y: np.ndarray, groups: np.ndarray | None, cfg: CrossvalParams, seed: int) -> list[Fold]:
    """``cfg.folds`` x ``cfg.repeats`` folds, each with a validation part carved from its training part."""
    zeros = np.zeros(len(y))
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < cfg.folds:
        print(f"note: crossval.folds is {cfg.folds} but the smallest class has {smallest} images: some folds test "
              "none of its images (lower crossval.folds to test every class in every fold)", file=sys.stderr)
    try:
        with warnings.catch_warnings():  # said once above, in the project's words
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            if groups is None:
                splits = list(RepeatedStratifiedKFold(n_splits=cfg.folds, n_repeats=cfg.repeats,
                                                      random_state=seed).split(zeros, y))
            else:
                splits = [s for r in range(cfg.repeats) for s in StratifiedGroupKFold(
                    n_splits=cfg.folds, shuffle=True, random_state=seed + r).split(zeros, y, groups)]
    except ValueError as err:
        raise UserError(f"cross-validation: {err}; lower crossval.folds") from None
    folds = []
    for i, (fit_part, test) in enumerate(splits):
        repeat, fold = divmod(i, cfg.folds)
        train, val = carve_validation(fit_part, y, groups, cfg.val_fraction, seed + 1000 * repeat + fold)
        folds.append(Fold(repeat, fold, train, val, np.sort(test)))
    return folds


def carve_validation(fit_part: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) rows of ``fit_part``: one stratified (grouped) part of about ``fraction`` as val
    (more when every class has fewer images than ``1 / fraction``: each part needs one of the
    largest class)."""
    n_groups = len(np.unique(groups[fit_part])) if groups is not None else len(fit_part)
    largest_class = int(np.bincount(y[fit_part]).max())
    n_splits = min(max(2, round(1 / fraction)), n_groups, largest_class)
    if n_splits < 2:
        raise UserError("cross-validation: a fold's training part is too small to hold out a validation part; "
                        "lower crossval.folds or add images")
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer images than parts is expected in small sets
        warnings.simplefilter("ignore", UserWarning)
        train, val = next(splitter.split(np.zeros(len(fit_part)), y[fit_part],
                                         None if groups is None else groups[fit_part]))
    return np.sort(fit_part[train]), np.sort(fit_part[val])
