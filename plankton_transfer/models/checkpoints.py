"""Epoch checkpoints of the fine-tuning stage, so a killed run resumes where it stopped.

After every epoch the stage writes ``<folder>/checkpoint.pt`` (a DVC ``persist`` output, so
``dvc repro`` leaves it in place): one :class:`Checkpoint` record holding the network, the
optimiser's state, the best epoch's weights, the per-epoch history and the epoch, saved as
plain tensors and numbers (loaded with ``weights_only=True``; models/torch_files.py). It is
written atomically (files.py): a kill leaves the previous epoch's checkpoint or this one.

No random-number state is kept: each epoch's data order and global seed derive from
(seed, epoch), and each training image's augmentation from (seed, epoch, index)
(data/augment.py), so a run resumed after epoch k computes what an uninterrupted run
computes from epoch k+1 on. The learning rate is a function of the epoch (no scheduler
state either).

A checkpoint is used only by the run it belongs to: its fingerprint covers the backbone and
weight file, the split, and every setting that changes the result. Once the stage's outputs
are written, the checkpoint is replaced by a small ``finished.json``, so the next run (new
code, ``dvc repro --force``) trains from the start instead of reusing a finished training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from plankton_transfer.files import atomic_path, write_json
from plankton_transfer.models.torch_files import load_tensor_file
from plankton_transfer.records import Record

CHECKPOINT = "checkpoint.pt"
FINISHED = "finished.json"


@dataclasses.dataclass(frozen=True)
class Checkpoint(Record):
    """The state of a fine-tuning run after its epoch ``epoch``."""

    FORMAT = "plankton-transfer/finetune-checkpoint"
    VERSION = 1
    REMAKE = "delete the checkpoint folder to fine-tune from the start"

    fingerprint: str  # of the settings, data and weights it belongs to
    epoch: int  # the last finished epoch
    best_epoch: int
    best_val_loss: float
    stopped: bool  # early stopping fired, or max_epochs reached: training is over
    seconds: float  # training time so far
    history: list[dict[str, float]]  # per epoch: train/val loss and accuracy, learning rates
    network: dict[str, torch.Tensor]  # the network (backbone and head) after ``epoch``
    optimizer: dict[str, Any]  # torch.optim's state_dict: tensors, numbers, lists
    best: dict[str, torch.Tensor]  # the network at ``best_epoch``


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the JSON of ``settings`` (plain values)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint(folder: Path, expected: str) -> Checkpoint | None:
    """The checkpoint in ``folder`` when it belongs to this run (same fingerprint), else None
    (with a note when one from other settings is set aside)."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    checkpoint = Checkpoint.from_dict(load_tensor_file(path), path)
    if checkpoint.fingerprint != expected:
        print(f"note: {path} belongs to other settings, data or weights; fine-tuning from the start (it is replaced "
              "after the first epoch)")
        return None
    return checkpoint


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CHECKPOINT) as tmp:
        torch.save(checkpoint.to_dict(), tmp)
    (folder / FINISHED).unlink(missing_ok=True)  # the stage wrote it at the end of an earlier run


def mark_finished(folder: Path, summary: dict[str, Any]) -> None:
    """The run's outputs are written: keep a note of it instead of the (large) checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / FINISHED, {**summary, "note": "training finished and its outputs were written; the next run "
                                                     "fine-tunes from the start"})
    (folder / CHECKPOINT).unlink(missing_ok=True)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict on the CPU, contiguous (channels_last weights included)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
