"""Head training: the study's protocol, exactly, on cached features (models/heads.py), and the
one linear head (models/linear_head.py)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from plankton_transfer.evaluation.metrics import score
from plankton_transfer.models.heads import RowGroup, fit_heads
from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.params.train import TrainParams


def blobs(n: int, dim: int = 16, classes: int = 3, seed: int = 0, noise: float = 1.0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2  # same task for every seed
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = centres[y] + noise * torch.randn(n, dim, generator=g)
    return x.half().float(), y


def stacked(train, val):
    """train and val rows as one matrix, and the group that trains on the first and stops on the second."""
    x, y = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
    return x, y, RowGroup(np.arange(len(train[1])), np.arange(len(train[1]), len(y)))


def run(lrs, seed=0, epochs=15, patience=100, train=None, val=None, history=True):
    x, y, group = stacked(train or blobs(120, seed=1), val or blobs(60, seed=2))
    cfg = TrainParams(lr=tuple(lrs), batch_size=24, max_epochs=epochs, patience=patience)
    return fit_heads(x, y, [group], 3, cfg, seed, history=history)


def test_heads_trained_together_equal_heads_trained_alone():
    together = run([0.001, 0.01, 0.1])
    for k, lr in enumerate([0.001, 0.01, 0.1]):
        alone = run([lr])
        assert torch.allclose(together.heads[k].weight, alone.heads[0].weight, atol=1e-6)
        assert together.best_epoch[k] == alone.best_epoch[0]
        assert math.isclose(together.best_val_loss[k], alone.best_val_loss[0], rel_tol=1e-6)


def test_the_trainer_equals_the_plain_pytorch_study_loop():
    """nn.Linear + torch.optim.SGD + CrossEntropyLoss over shuffled batches of 24, as the study's
    script: the written-out gradient and in-place update give the same weights."""
    train = blobs(100, seed=3)
    x, y, group = stacked(train, blobs(30, seed=4))
    cfg = TrainParams(lr=0.01, momentum=0.9, weight_decay=0.001, batch_size=24, max_epochs=3, patience=100)
    result = fit_heads(x, y, [group], 3, cfg, seed=5, history=True)
    torch.manual_seed(5)
    ref = nn.Linear(16, 3)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=0.001)
    order_generator = torch.Generator().manual_seed(5)
    for epoch in range(3):
        order = torch.randperm(100, generator=order_generator)
        for start in range(0, 100, 24):
            idx = order[start:start + 24]
            loss = nn.CrossEntropyLoss()(ref(train[0][idx]), train[1][idx])
            ref_opt.zero_grad()
            loss.backward()
            ref_opt.step()
        with torch.no_grad():
            ref_loss = nn.CrossEntropyLoss()(ref(x[100:]), y[100:]).item()
        assert math.isclose(result.history[epoch]["val_loss"][0], ref_loss, rel_tol=1e-5)
    best = result.best_epoch[0]
    assert best == 3  # still improving, so the last epoch's weights are the ones kept
    assert torch.allclose(result.heads[0].weight, ref.weight.detach(), atol=1e-6)
    assert torch.allclose(result.heads[0].bias, ref.bias.detach(), atol=1e-6)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    # a tiny, noisy training set: validation loss bottoms out, then rises as the head overfits
    result = run([0.5], epochs=200, patience=5, train=blobs(12, seed=4, noise=3.0), val=blobs(90, seed=5, noise=3.0))
    best = result.best_epoch[0]
    assert result.epochs_run[0] == best + 5 < 200
    val_losses = [row["val_loss"][0] for row in result.history]
    assert min(val_losses) == val_losses[best - 1] == result.best_val_loss[0]


def test_groups_trained_together_equal_each_group_alone_and_in_chunks():
    """Cross-validation's folds: each group of rows has its own batch order (seed + group), and
    a group without a batch left at a step is not updated (its own loop would have ended)."""
    x, y = blobs(103, noise=2.0)
    rng = np.random.default_rng(0)
    groups = [RowGroup(np.sort(rng.choice(103, size, replace=False)), np.arange(90, 103)) for size in (73, 80, 51)]
    cfg = TrainParams(lr=(0.01, 0.1), batch_size=24, max_epochs=25, patience=4)
    together = fit_heads(x, y, groups, 3, cfg, seed=3)
    for g, group in enumerate(groups):
        alone = fit_heads(x, y, [group], 3, cfg, seed=3, first_group=g)
        for k in range(2):
            assert together.best_epoch[2 * g + k] == alone.best_epoch[k]
            assert together.epochs_run[2 * g + k] == alone.epochs_run[k]
            assert torch.allclose(together.heads[2 * g + k].weight, alone.heads[k].weight, atol=1e-5)


def test_training_learns_separable_data_and_the_head_scores_as_sklearn():
    result = run([0.05], epochs=30, train=blobs(120, seed=1, noise=2.0), val=blobs(60, seed=2, noise=2.0))
    head: LinearHead = result.heads[0]
    x, y = blobs(60, seed=2, noise=2.0)
    proba = head.probabilities(x.numpy())
    metrics = score(y.numpy(), proba, ("accuracy", "loss"))
    assert metrics["accuracy"] > 0.8
    assert math.isclose(metrics["loss"], result.best_val_loss[0], rel_tol=1e-4)  # the kept epoch's val loss
    layer = head.module()  # the exported layer is the same head
    assert np.allclose(torch.softmax(layer(x), 1).detach().numpy(), proba, atol=1e-6)
