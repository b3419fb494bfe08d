"""Training the new last layer on cached features: the study's protocol without its overhead.

The protocol is the study's: shuffled mini-batches, SGD with momentum, after every epoch a
full evaluation of the train and validation sets, early stopping on validation
cross-entropy with patience, and the weights of the best validation epoch kept.

What changes is only where the inputs come from: the features are resident on the device
(no DataLoader, no backbone per step), so an epoch is a few tensor ops per batch. Where they
do not fit, the same batches are read from the memory-mapped feature files instead
(:func:`take_rows`): the same rows in the same order, so the same head. Several
heads (one per learning rate) can train at once, stacked in one batched matmul; each head's
gradient, update and early stopping are exactly those it would have alone.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax
from torch import nn

from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path
from plankton_transfer.models.weights import load_state_dict_file


class LinearHeads(nn.Module):
    """K independent linear layers ``dim -> classes``; forward gives (K, N, classes) logits."""

    def __init__(self, k: int, dim: int, classes: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        template = nn.Linear(dim, classes)  # torch's default init, as the study's replaced layer
        self.weights = nn.ParameterList([nn.Parameter(template.weight.detach().clone()) for _ in range(k)])
        self.biases = nn.ParameterList([nn.Parameter(template.bias.detach().clone()) for _ in range(k)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.stack(list(self.weights))  # (K, C, D)
        bias = torch.stack(list(self.biases))  # (K, C)
        return torch.baddbmm(bias.unsqueeze(1), x.unsqueeze(0).expand(len(weight), -1, -1), weight.transpose(1, 2))

    def head_state(self, k: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weights[k].detach().cpu().clone(), "bias": self.biases[k].detach().cpu().clone()}


def make_optimizer(heads: LinearHeads, lrs: list[float], momentum: float, weight_decay: float) -> torch.optim.SGD:
    groups = [{"params": [w, b], "lr": lr} for w, b, lr in zip(heads.weights, heads.biases, lrs)]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=momentum, weight_decay=weight_decay)


Features = torch.Tensor | np.ndarray  # resident on the device, or a memory-mapped float16 .npy


def take_rows(x: Features, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` (in that order) as float32 on ``device``: indexed where they are resident,
    read from the memory-mapped file otherwise (the same float16 values either way)."""
    if isinstance(x, torch.Tensor):
        return x[idx.to(x.device)].float()
    return torch.from_numpy(np.asarray(x[idx.cpu().numpy()])).to(device).float()


def take_range(x: Features, start: int, stop: int, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x[start:stop].float()
    return torch.from_numpy(np.array(x[start:stop])).to(device).float()  # a copy: the memory map is read-only


def train_one_epoch(heads: LinearHeads, optimizer: torch.optim.Optimizer, x: Features, y: torch.Tensor,
                    batch_size: int, generator: torch.Generator) -> None:
    """One pass over (x, y) in shuffled mini-batches; x is float16 (cast per batch), resident
    or memory-mapped; y is on the heads' device."""
    heads.train()
    order = torch.randperm(len(x), generator=generator).to(y.device)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        logits = heads(take_rows(x, idx, y.device))  # (K, n, C)
        # sum over heads of each head's mean loss: every head gets exactly its own gradient
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(len(logits)), reduction="sum") / len(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.inference_mode()
def evaluate(heads: LinearHeads, x: Features, y: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head mean cross-entropy and accuracy over (x, y): two tensors of shape (K,)."""
    heads.eval()
    loss_sum = torch.zeros(len(heads.weights), device=y.device)
    correct = torch.zeros_like(loss_sum)
    for start in range(0, len(x), chunk):
        logits = heads(take_range(x, start, start + chunk, y.device))
        target = y[start:start + chunk]
        loss_sum += F.cross_entropy(logits.transpose(1, 2), target.expand(len(logits), -1), reduction="none").sum(1)
        correct += (logits.argmax(-1) == target).sum(1)
    return (loss_sum / len(x)).cpu(), (correct / len(x)).cpu()


@dataclasses.dataclass
class FitResult:
    best_states: list[dict[str, torch.Tensor]]
    best_epoch: list[int]
    best_val_loss: list[float]
    epochs_run: list[int]  # when each head's early stopping fired (or max_epochs)
    history: list[dict[str, list[float]]]  # per epoch: train/val loss/accuracy, one value per head


def fit(heads: LinearHeads, optimizer: torch.optim.Optimizer, train: tuple[Features, torch.Tensor],
        val: tuple[Features, torch.Tensor], batch_size: int, max_epochs: int, patience: int,
        generator: torch.Generator, progress=None) -> FitResult:
    """Train until every head's validation loss has not improved for ``patience`` epochs."""
    k = len(heads.weights)
    best_loss, best_epoch = [math.inf] * k, [0] * k
    best_states = [heads.head_state(i) for i in range(k)]
    stopped_at: list[int | None] = [None] * k
    history: list[dict[str, list[float]]] = []
    for epoch in range(1, max_epochs + 1):
        train_one_epoch(heads, optimizer, *train, batch_size, generator)
        (train_loss, train_acc), (val_loss, val_acc) = evaluate(heads, *train), evaluate(heads, *val)
        history.append({"train_loss": train_loss.tolist(), "train_accuracy": train_acc.tolist(),
                        "val_loss": val_loss.tolist(), "val_accuracy": val_acc.tolist()})
        for i in range(k):
            if stopped_at[i] is not None:
                continue
            if val_loss[i] < best_loss[i]:
                best_loss[i], best_epoch[i], best_states[i] = float(val_loss[i]), epoch, heads.head_state(i)
            elif epoch - best_epoch[i] >= patience:
                stopped_at[i] = epoch
        if progress is not None:
            progress(epoch, history[-1])
        if all(s is not None for s in stopped_at):
            break
    epochs_run = [s if s is not None else len(history) for s in stopped_at]
    return FitResult(best_states, best_epoch, best_loss, epochs_run, history)


MODEL_FORMAT = "plankton-transfer-head/1"


def save_model_file(record: dict, path) -> None:
    """Save a trained head with all it needs for later use (see stages/train.py)."""
    with atomic_path(path) as tmp:
        torch.save({"format": MODEL_FORMAT, **record}, tmp)


def load_model_file(path) -> dict:
    """Load a model file with ``weights_only=True``: plain tensors and strings, no code."""
    record = load_state_dict_file(path)
    if record.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a model file of this pipeline (format {record.get('format')!r}); "
                        "train it with the train stage")
    return record


def head_logits(record: dict, features: np.ndarray) -> np.ndarray:
    """Raw scores (logits) of a model file's trained head for (N, D) feature rows."""
    weight = record["head"]["weight"].numpy()
    bias = record["head"]["bias"].numpy()
    return np.asarray(features, dtype=np.float32) @ weight.T + bias


def head_temperature(record: dict) -> float:
    """The temperature fitted on the validation set by the train stage (1: a file without one)."""
    return float((record.get("calibration") or {}).get("temperature", 1.0))


def head_probabilities(record: dict, features: np.ndarray, calibrated: bool = True) -> np.ndarray:
    """Class probabilities of a model file's trained head for (N, D) feature rows: temperature-scaled
    (plankton_transfer/evaluation/calibration.py) unless ``calibrated=False``; the arg-max is the same."""
    temperature = head_temperature(record) if calibrated else 1.0
    return softmax(head_logits(record, features) / np.float32(temperature), axis=1)
