"""The one trainer of the new last layer (models/linear_head.py) on cached features.

:func:`fit_heads` trains it with the study's protocol (SGD with momentum on
shuffled mini-batches, after every epoch the validation cross-entropy, early stopping with
patience, the weights of the best validation epoch kept), for the train stage, for
cross-validation and for the open-set stage alike.

Several heads train at once: one per learning rate (``train.lr`` as a list) in each group of
rows (a fold of cross-validation; the train stage has one group). Each head has its own rows,
batch order (a generator seeded with ``seed + group``), gradient, momentum, early stopping and
kept weights: exactly what training it alone gives.

Speed: the gradient of the cross-entropy of a linear layer is written out (softmax minus the
one-hot target, times the batch), and the SGD update is applied in place, so a step is a few
tensor operations and no autograd graph. The per-step products are small, so on a CPU they run
on one thread: handing them to a pool of threads costs more than it saves, ten times more when
the cores are shared (a loaded machine, ``dvc queue start -j 2``, a Slurm job given fewer cores
than the node has). The whole-split evaluations after each epoch are large and use every
usable core (plankton_transfer/settings.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.params.train import TrainParams
from plankton_transfer.settings import usable_cores

Features = torch.Tensor | np.ndarray  # resident on the device (float32), or a memory-mapped float16 .npy
EVALUATION_CELLS = 1 << 24  # feature values scored at a time (64 MB of float32)


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """Rows (indices into the features) that some heads train on and are stopped by."""

    train: np.ndarray
    val: np.ndarray


@dataclasses.dataclass
class FitResult:
    """Per head (group-major: group g, learning rate j is head ``g * len(lrs) + j``)."""

    heads: list[LinearHead]  # the weights of each head's best validation epoch
    best_epoch: list[int]
    best_val_loss: list[float]
    epochs_run: list[int]  # when each head's early stopping fired (or max_epochs)
    history: list[dict[str, list[float]]]  # per epoch, with ``history=True``: train/val loss and accuracy per head


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def take_rows(x: Features, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` (any shape) as float32 on ``device``: indexed where they are resident, read
    from the memory-mapped file otherwise (the same float16 values either way)."""
    if isinstance(x, torch.Tensor):
        return x[idx].float()
    flat = idx.reshape(-1).cpu().numpy()
    rows = torch.from_numpy(np.asarray(x[flat], dtype=np.float32)).to(device)
    return rows.view(*idx.shape, x.shape[1])


class HeadStack:
    """K heads as stacked tensors (weight (K, C, D), bias (K, C)) with SGD momentum buffers,
    initialised as one ``nn.Linear`` (torch's default, as the study's replaced layer) copied K times."""

    def __init__(self, k: int, dim: int, classes: int, seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        template = nn.Linear(dim, classes)
        self.weight = template.weight.detach().to(device).expand(k, -1, -1).clone()
        self.bias = template.bias.detach().to(device).expand(k, -1).clone()
        self.weight_buf, self.bias_buf = torch.zeros_like(self.weight), torch.zeros_like(self.bias)
        self.has_buf = torch.zeros(k, dtype=torch.bool, device=device)

    def head(self, k: int) -> LinearHead:
        return LinearHead(self.weight[k].detach().cpu().clone(), self.bias[k].detach().cpu().clone())


def sgd_step(stack: HeadStack, grad_w: torch.Tensor, grad_b: torch.Tensor, lrs: torch.Tensor,
             active: torch.Tensor, momentum: float, weight_decay: float) -> None:
    """torch.optim.SGD's update (momentum, no dampening, weight decay), in place, for every head
    that is ``active`` this step; one without rows (its own loop would have ended) is left
    alone, as SGD skips a parameter without a gradient."""
    if weight_decay:
        grad_w.add_(stack.weight, alpha=weight_decay)
        grad_b.add_(stack.bias, alpha=weight_decay)
    if momentum:
        if bool(active.all()) and bool(stack.has_buf.all()):  # every step but the first (or a fold's last)
            grad_w = stack.weight_buf.mul_(momentum).add_(grad_w)
            grad_b = stack.bias_buf.mul_(momentum).add_(grad_b)
        else:
            first = ~stack.has_buf
            grad_w = torch.where(first[:, None, None], grad_w, stack.weight_buf * momentum + grad_w)
            grad_b = torch.where(first[:, None], grad_b, stack.bias_buf * momentum + grad_b)
            stack.weight_buf.copy_(torch.where(active[:, None, None], grad_w, stack.weight_buf))
            stack.bias_buf.copy_(torch.where(active[:, None], grad_b, stack.bias_buf))
            stack.has_buf |= active
    step = lrs * active
    stack.weight.addcmul_(grad_w, step[:, None, None], value=-1)
    stack.bias.addcmul_(grad_b, step[:, None], value=-1)


def cross_entropy_gradients(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of each head's mean cross-entropy over its own rows.

    x (G, B, D) rows of G groups, y (G, B), mask (G, B) 1 for real rows; weight (G, P, C, D),
    bias (G, P, C): P heads per group. Returns (G, P, C, D) and (G, P, C)."""
    logits = torch.matmul(x.unsqueeze(1), weight.transpose(-1, -2)) + bias.unsqueeze(2)  # (G, P, B, C)
    delta = torch.softmax(logits, dim=-1)
    delta.scatter_add_(-1, y[:, None, :, None].expand(-1, delta.shape[1], -1, 1),
                       torch.full_like(delta[..., :1], -1.0))
    delta *= (mask / mask.sum(1, keepdim=True).clamp(min=1))[:, None, :, None]
    return torch.matmul(delta.transpose(-1, -2), x.unsqueeze(1)), delta.sum(2)


def padded_batches(orders: list[torch.Tensor], step: int, batch_size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (G, B) of each group's ``step``-th batch, padded to the longest, and the 0/1 mask."""
    rows = [order[step * batch_size:(step + 1) * batch_size] for order in orders]
    width = max(1, max(len(r) for r in rows))
    idx = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), device=device)
    for g, r in enumerate(rows):
        idx[g, :len(r)], mask[g, :len(r)] = r, 1
    return idx, mask


def train_one_epoch(stack: HeadStack, x: Features, y: torch.Tensor, groups: list[torch.Tensor],
                    generators: list[torch.Generator], per_group: int, lrs: torch.Tensor, cfg: TrainParams) -> None:
    """One pass of every group's shuffled mini-batches, every head of a group on the same batches."""
    device = y.device
    orders = [rows[torch.randperm(len(rows), generator=g).to(device)] for rows, g in zip(groups, generators)]
    steps = max(math.ceil(len(order) / cfg.batch_size) for order in orders)
    for step in range(steps):
        idx, mask = padded_batches(orders, step, cfg.batch_size, device)
        xb = take_rows(x, idx, device)
        shape = (len(groups), per_group, *stack.weight.shape[1:])
        grad_w, grad_b = cross_entropy_gradients(xb, y[idx], mask, stack.weight.view(shape),
                                                 stack.bias.view(*shape[:3]))
        active = (mask.sum(1) > 0).repeat_interleave(per_group)
        sgd_step(stack, grad_w.flatten(0, 1), grad_b.flatten(0, 1), lrs, active, cfg.momentum, cfg.weight_decay)


@torch.inference_mode()
def evaluate(stack: HeadStack, x: Features, y: torch.Tensor, groups: list[torch.Tensor],
             per_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head: mean cross-entropy and accuracy over its group's rows ``groups[g]``; shape (K,)."""
    losses, accuracies = [], []
    for g, rows in enumerate(groups):
        heads = slice(g * per_group, (g + 1) * per_group)
        loss_sum = torch.zeros(per_group, device=y.device)
        correct = torch.zeros(per_group, device=y.device)
        chunk = max(1, EVALUATION_CELLS // max(1, x.shape[1]))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            logits = torch.matmul(take_rows(x, part, y.device), stack.weight[heads].transpose(-1, -2))
            logits += stack.bias[heads].unsqueeze(1)  # (P, n, C)
            target = y[part].expand(per_group, -1)
            loss_sum += torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            correct += (logits.argmax(-1) == target).sum(1)
        n = max(1, len(rows))
        losses.append(loss_sum / n)
        accuracies.append(correct / n)
    return torch.cat(losses).cpu(), torch.cat(accuracies).cpu()


def fit_heads(x: Features, y: torch.Tensor, groups: list[RowGroup], n_classes: int, cfg: TrainParams, seed: int,
              history: bool = False, progress: Callable[[int, dict], None] | None = None,
              first_group: int = 0) -> FitResult:
    """Train ``len(cfg.lrs)`` heads on each group's train rows until every head's validation loss
    has not improved for ``cfg.patience`` epochs (or ``cfg.max_epochs``).

    Group ``g``'s batch order comes from a generator seeded with ``seed + first_group + g``, so
    groups can be trained in chunks (``first_group``: the chunk's first group) with the result
    of training them all at once."""
    device, per_group = y.device, len(cfg.lrs)
    k = len(groups) * per_group
    stack = HeadStack(k, x.shape[1], n_classes, seed, device)
    lrs = torch.tensor([lr for _ in groups for lr in cfg.lrs], device=device)
    train_rows = [torch.as_tensor(g.train, dtype=torch.long, device=device) for g in groups]
    val_rows = [torch.as_tensor(g.val, dtype=torch.long, device=device) for g in groups]
    generators = [torch.Generator().manual_seed(seed + first_group + i) for i in range(len(groups))]
    best_loss, best_epoch = [math.inf] * k, [0] * k
    best_heads = [stack.head(i) for i in range(k)]
    stopped: list[int | None] = [None] * k
    rows_seen: list[dict[str, list[float]]] = []
    cores = usable_cores() if device.type == "cpu" else torch.get_num_threads()
    for epoch in range(1, cfg.max_epochs + 1):
        with torch_threads(1 if device.type == "cpu" else cores):
            train_one_epoch(stack, x, y, train_rows, generators, per_group, lrs, cfg)
        with torch_threads(cores):
            val_loss, val_acc = evaluate(stack, x, y, val_rows, per_group)
            if history:
                train_loss, train_acc = evaluate(stack, x, y, train_rows, per_group)
                rows_seen.append({"train_loss": train_loss.tolist(), "train_accuracy": train_acc.tolist(),
                                  "val_loss": val_loss.tolist(), "val_accuracy": val_acc.tolist()})
        for i in range(k):
            if stopped[i] is not None:
                continue
            if val_loss[i] < best_loss[i]:
                best_loss[i], best_epoch[i], best_heads[i] = float(val_loss[i]), epoch, stack.head(i)
            elif epoch - best_epoch[i] >= cfg.patience:
                stopped[i] = epoch
        if progress is not None:
            progress(epoch, {"val_loss": val_loss.tolist()})
        if all(s is not None for s in stopped):
            break
    epochs_run = [s if s is not None else epoch for s in stopped]
    return FitResult(best_heads, best_epoch, best_loss, epochs_run, rows_seen)


def best_of(result: FitResult, group: int, per_group: int) -> int:
    """The head of ``group`` (one per learning rate) with the lowest validation loss; the test
    split is never looked at."""
    heads = range(group * per_group, (group + 1) * per_group)
    return min(heads, key=lambda k: result.best_val_loss[k])


def train_linear_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      n_classes: int, cfg: TrainParams, seed: int, device: torch.device | None = None) -> LinearHead:
    """One head on in-memory features, early-stopped on (x_val, y_val); the best learning rate of
    ``cfg.lrs`` on validation loss (the open-set stage's held-out-class heads, the active-learning
    rounds). The train stage's protocol and trainer, as :func:`fit_heads` runs it."""
    device = device or torch.device("cpu")
    x = torch.from_numpy(np.concatenate([np.asarray(x_train, np.float32), np.asarray(x_val, np.float32)])).to(device)
    y = torch.from_numpy(np.concatenate([y_train, y_val]).astype(np.int64)).to(device)
    group = RowGroup(np.arange(len(y_train)), np.arange(len(y_train), len(y)))
    result = fit_heads(x, y, [group], n_classes, cfg, seed)
    return result.heads[best_of(result, 0, len(cfg.lrs))]
