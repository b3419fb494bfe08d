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

All folds (and learning rates) train at once: each is a head of one batched matmul with its
own rows, batch order, gradient, early stopping and kept weights, exactly what training it
alone would give (tests/test_crossval.py checks this against ``fit``), so 5 x 2 folds cost
about as much as one training run.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold, StratifiedKFold

from plankton_transfer.errors import UserError
from plankton_transfer.models.heads import LinearHeads, make_optimizer
from plankton_transfer.params import CrossvalParams, TrainParams


@dataclasses.dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    train: np.ndarray  # row indices
    val: np.ndarray
    test: np.ndarray


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


@dataclasses.dataclass
class FoldsFit:
    best_states: list[dict[str, torch.Tensor]]  # one per head: folds x learning rates, fold-major
    best_epoch: list[int]
    best_val_loss: list[float]
    epochs_run: list[int]


def train_folds_epoch(heads: LinearHeads, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      fold_train: list[torch.Tensor], per_fold: int, batch_size: int,
                      generators: list[torch.Generator]) -> None:
    """One epoch of every fold's own shuffled mini-batches; a fold with no batch left at a step
    is skipped (no momentum step), as its own training loop would have ended."""
    heads.train()
    orders = [rows[torch.randperm(len(rows), generator=g).to(rows.device)] for rows, g in zip(fold_train, generators)]
    steps = max(math.ceil(len(order) / batch_size) for order in orders)
    for step in range(steps):
        idx, mask = padded_rows([order[step * batch_size:(step + 1) * batch_size] for order in orders], per_fold,
                                x.device)
        counts = mask.sum(1)
        loss = head_losses(heads, x, y, idx, mask).sum()  # the sum of each head's own mean loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for k in torch.nonzero(counts == 0).flatten().tolist():
            heads.weights[k].grad, heads.biases[k].grad = None, None
        optimizer.step()


def padded_rows(rows: list[torch.Tensor], per_fold: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (K, width) and a 0/1 mask of each head's rows, padded to the longest."""
    width = max(len(r) for r in rows)
    idx = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), device=device)
    for i, r in enumerate(rows):
        idx[i, :len(r)], mask[i, :len(r)] = r, 1
    return idx.repeat_interleave(per_fold, 0), mask.repeat_interleave(per_fold, 0)


def head_losses(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Each head's mean cross-entropy over its own rows ``idx`` (masked padding): shape (K,)."""
    weight, bias = torch.stack(list(heads.weights)), torch.stack(list(heads.biases))
    logits = torch.baddbmm(bias.unsqueeze(1), x[idx].float(), weight.transpose(1, 2))  # (K, width, C)
    losses = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none").view_as(mask)
    return (losses * mask).sum(1) / mask.sum(1).clamp(min=1)


VALIDATION_CELLS = 1 << 26  # gathered feature values per chunk (256 MB of float32), however large the set


@torch.inference_mode()
def validation_losses(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """Per head: mean cross-entropy over its own validation rows, in chunks of rows."""
    heads.eval()
    chunk = max(1, VALIDATION_CELLS // (len(idx) * x.shape[1]))
    sums = torch.zeros(len(idx), device=x.device)
    for start in range(0, idx.shape[1], chunk):
        part = mask[:, start:start + chunk]
        sums += head_losses(heads, x, y, idx[:, start:start + chunk], part) * part.sum(1).clamp(min=1)
    return (sums / mask.sum(1).clamp(min=1)).cpu()


def fit_folds(x: torch.Tensor, y: torch.Tensor, n_classes: int, folds: list[Fold], cfg: TrainParams,
              seed: int) -> FoldsFit:
    """Train one head per fold and learning rate at once, with per-head early stopping."""
    per_fold, device = len(cfg.lrs), x.device
    k = len(folds) * per_fold
    heads = LinearHeads(k, x.shape[1], n_classes, seed).to(device)
    optimizer = make_optimizer(heads, [lr for _ in folds for lr in cfg.lrs], cfg.momentum, cfg.weight_decay)
    fold_train = [torch.as_tensor(f.train, device=device) for f in folds]
    val_idx, val_mask = padded_rows([torch.as_tensor(f.val, device=device) for f in folds], per_fold, device)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(folds))]
    best_loss, best_epoch = [math.inf] * k, [0] * k
    best_states = [heads.head_state(i) for i in range(k)]
    stopped: list[int | None] = [None] * k
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        train_folds_epoch(heads, optimizer, x, y, fold_train, per_fold, cfg.batch_size, generators)
        val_loss = validation_losses(heads, x, y, val_idx, val_mask)
        for i in range(k):
            if stopped[i] is not None:
                continue
            if val_loss[i] < best_loss[i]:
                best_loss[i], best_epoch[i], best_states[i] = float(val_loss[i]), epoch, heads.head_state(i)
            elif epoch - best_epoch[i] >= cfg.patience:
                stopped[i] = epoch
        if all(s is not None for s in stopped):
            break
    return FoldsFit(best_states, best_epoch, best_loss, [s if s is not None else epoch for s in stopped])
