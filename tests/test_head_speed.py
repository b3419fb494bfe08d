"""The trainer's fast paths (models/heads.py) give the heads its plain path gives: groups on
threads, stopped groups skipped, the graph-ready step (what CUDA captures), oneDNN's products
and torch's fused SGD update. Timings are never asserted (bench/head_speed.py measures them)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from plankton_transfer.models import heads
from plankton_transfer.models.heads import RowGroup, fit_heads
from plankton_transfer.params.train import TrainParams


def blobs(n: int, dim: int = 16, classes: int = 4, noise: float = 2.5, seed: int = 0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    y = torch.arange(n) % classes
    x = centres[y] + noise * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x.half().float(), y


def folds(n: int = 150, sizes=(70, 101, 49, 88)) -> list[RowGroup]:
    """Groups of different sizes (different numbers of batches, last batches of other sizes)."""
    rng = np.random.default_rng(0)
    out = []
    for size in sizes:
        rows = rng.permutation(n)
        out.append(RowGroup(np.sort(rows[:size]), np.sort(rows[size:size + 30])))
    return out


def same(a, b) -> None:
    """Two fits, to the bit."""
    assert a.best_epoch == b.best_epoch and a.epochs_run == b.epochs_run and a.best_val_loss == b.best_val_loss
    for ha, hb in zip(a.heads, b.heads):
        assert torch.equal(ha.weight, hb.weight) and torch.equal(ha.bias, hb.bias)


CFG = TrainParams(lr=(0.01, 0.05, 0.05), momentum=0.9, weight_decay=0.001, batch_size=24, max_epochs=30, patience=3)


def test_groups_on_threads_equal_groups_in_turn(monkeypatch):
    x, y = blobs(150)
    monkeypatch.setattr(heads, "usable_cores", lambda: 1)
    in_turn = fit_heads(x, y, folds(), 4, CFG, seed=2, history=True)
    monkeypatch.setattr(heads, "usable_cores", lambda: 3)
    monkeypatch.setattr(heads, "PARALLEL_WORK", 0)  # threads even for this little work
    on_threads = fit_heads(x, y, folds(), 4, CFG, seed=2, history=True)
    same(in_turn, on_threads)


def test_stopped_groups_are_skipped_and_the_kept_heads_are_those_of_training_them_on():
    """Without history a group whose every head stopped is no longer trained; with history it is
    (the curves stay whole): the best heads, epochs and losses are the same to the bit."""
    x, y = blobs(150, noise=4.0)
    skipped = fit_heads(x, y, folds(), 4, CFG, seed=1)
    trained_on = fit_heads(x, y, folds(), 4, CFG, seed=1, history=True)
    assert len(set(skipped.epochs_run)) > 1 and max(skipped.epochs_run) < CFG.max_epochs, \
        "groups should stop at different epochs, so skipping is exercised"
    same(skipped, trained_on)


def test_graph_ready_steps_give_the_eager_heads(monkeypatch):
    """The step CUDA captures as a graph (rows read on the device at a counter it advances)
    run as is on the CPU: the same batches, so the same heads."""
    x, y = blobs(150)
    eager = fit_heads(x, y, folds(), 4, CFG, seed=4, history=True)
    monkeypatch.setattr(heads, "use_graphs", lambda device: True)
    graphed = fit_heads(x, y, folds(), 4, CFG, seed=4, history=True)
    same(eager, graphed)
    assert eager.history == graphed.history


@pytest.mark.parametrize("fallback", ["onednn_linear", "fused_sgd"])
def test_the_fallbacks_give_the_same_heads_within_float_tolerance(monkeypatch, fallback):
    """torch's addmm instead of oneDNN's products, the written-out update instead of the fused one."""
    x, y = blobs(150)
    fast = fit_heads(x, y, folds(), 4, CFG, seed=3, history=True)
    monkeypatch.setattr(heads, fallback, lambda: None)
    plain = fit_heads(x, y, folds(), 4, CFG, seed=3, history=True)
    assert fast.best_epoch == plain.best_epoch and fast.epochs_run == plain.epochs_run
    assert fast.best_val_loss == pytest.approx(plain.best_val_loss, rel=1e-5)
    for a, b in zip(fast.heads, plain.heads):
        assert torch.allclose(a.weight, b.weight, atol=1e-5) and torch.allclose(a.bias, b.bias, atol=1e-5)


def test_linear_is_the_float32_product():
    g = torch.Generator().manual_seed(0)
    x, w, b, d = (torch.randn(s, generator=g) for s in ((24, 300), (51, 300), (51,), (24, 51)))
    assert torch.allclose(heads.linear(x, w, b), x @ w.T + b, atol=1e-4)
    assert torch.allclose(heads.linear(d.t(), x.t()), d.T @ x, atol=1e-4)  # the gradient's strided operands
