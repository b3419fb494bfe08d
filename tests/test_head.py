"""Head training: the study's protocol, exactly, on cached features."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from plankton_transfer.models.heads import LinearHeads, evaluate, fit, make_optimizer, train_one_epoch
from plankton_transfer.evaluation.metrics import summary_metrics


def blobs(n: int, dim: int = 16, classes: int = 3, seed: int = 0, noise: float = 1.0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2  # same task for every seed
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = centres[y] + noise * torch.randn(n, dim, generator=g)
    return x.half(), y


def run(lrs, seed=0, epochs=15, patience=100, train=None, val=None):
    train = train or blobs(120, seed=1)
    val = val or blobs(60, seed=2)
    heads = LinearHeads(len(lrs), 16, 3, seed=seed)
    opt = make_optimizer(heads, lrs, momentum=0.9, weight_decay=0.0)
    return fit(heads, opt, train, val, batch_size=24, max_epochs=epochs, patience=patience,
               generator=torch.Generator().manual_seed(seed))


def test_heads_trained_together_equal_heads_trained_alone():
    together = run([0.001, 0.01, 0.1])
    for k, lr in enumerate([0.001, 0.01, 0.1]):
        alone = run([lr])
        assert torch.allclose(together.best_states[k]["weight"], alone.best_states[0]["weight"], atol=1e-6)
        assert together.best_epoch[k] == alone.best_epoch[0]
        assert math.isclose(together.best_val_loss[k], alone.best_val_loss[0], rel_tol=1e-6)


def test_fast_loop_equals_the_plain_pytorch_study_loop():
    """nn.Linear + SGD + CrossEntropyLoss over shuffled batches of 24, as the study's script."""
    x, y = blobs(100, seed=3)
    heads = LinearHeads(1, 16, 3, seed=5)
    opt = make_optimizer(heads, [0.01], momentum=0.9, weight_decay=0.0)
    torch.manual_seed(5)
    ref = nn.Linear(16, 3)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for _ in range(3):
        train_one_epoch(heads, opt, x, y, 24, g1)
        order = torch.randperm(len(x), generator=g2)
        for start in range(0, len(x), 24):
            idx = order[start:start + 24]
            loss = nn.CrossEntropyLoss()(ref(x[idx].float()), y[idx])
            ref_opt.zero_grad()
            loss.backward()
            ref_opt.step()
    assert torch.allclose(heads.weights[0], ref.weight, atol=1e-6)
    assert torch.allclose(heads.biases[0], ref.bias, atol=1e-6)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    # a tiny, noisy training set: validation loss bottoms out, then rises as the head overfits
    result = run([0.5], epochs=200, patience=5, train=blobs(12, seed=4, noise=3.0), val=blobs(90, seed=5, noise=3.0))
    best = result.best_epoch[0]
    assert result.epochs_run[0] == best + 5 < 200
    val_losses = [row["val_loss"][0] for row in result.history]
    assert min(val_losses) == val_losses[best - 1] == result.best_val_loss[0]


def test_training_learns_separable_data_and_evaluate_agrees_with_sklearn():
    result = run([0.05], epochs=30, train=blobs(120, seed=1, noise=2.0), val=blobs(60, seed=2, noise=2.0))
    heads = LinearHeads(1, 16, 3, seed=0)
    heads.weights[0].data, heads.biases[0].data = result.best_states[0]["weight"], result.best_states[0]["bias"]
    x, y = blobs(60, seed=2, noise=2.0)
    loss, acc = evaluate(heads, x, y)
    assert acc.item() > 0.8 and loss.item() > 0.01
    with torch.no_grad():
        proba = torch.softmax(heads(x.float())[0], dim=1).numpy()
    ref = summary_metrics(y.numpy(), proba)
    assert np.isclose(ref["accuracy"], acc.item()) and np.isclose(ref["loss"], loss.item(), rtol=1e-4)
