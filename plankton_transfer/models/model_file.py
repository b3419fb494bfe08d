"""The model file (``models/<model>.pt``): a trained head with everything needed to use it.

One typed record, :class:`ModelFile`, written by the train stage (and by the fine-tune stage,
with the fine-tuned backbone's weights) and read by evaluate, crossval, the open-set stage,
``plankton-predict`` and ``plankton-export``: the backbone and its weights, the input recipe,
the classes, the head, how it was trained, its calibration (temperature), its per-class
thresholds and the data it was trained and evaluated on. It is saved with ``torch.save`` as
plain tensors, numbers and text, and loaded with ``weights_only=True``: a model file never
runs code. Loading checks every field and value (shapes, finite numbers, a positive
temperature), so a damaged or edited file is one line naming it, never a traceback or a
silent auto-accept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path
from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.models.provenance import DataInfo, InputRecipe, WeightsInfo
from plankton_transfer.models.torch_files import load_tensor_file
from plankton_transfer.data.input_spec import PREPROCESS_MODES
from plankton_transfer.records import Record, plain

CONVERGENCE_MARGIN = 5  # best epoch this close to max_epochs: the head may not have converged


@dataclasses.dataclass(frozen=True)
class TrainingInfo:
    lr: float
    epochs: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    lr_sweep: dict[str, float]  # every learning rate tried -> its best validation loss
    params: dict[str, Any]  # the train section as used
    seed: int
    features: dict[str, Any]  # resident or streamed, and why (fine-tuning: the images, augmented)
    environment: dict[str, Any]
    section: str = "train"  # the params section it was trained with: train (the head) | finetune

    @property
    def converged(self) -> bool:
        """False when the best epoch is within a few epochs of the cap: more epochs (or a larger
        learning rate) would probably have lowered the validation loss further."""
        cap = int(self.params.get("max_epochs", self.epochs))
        return self.best_epoch <= cap - CONVERGENCE_MARGIN

    def convergence_warning(self, name: str) -> str:
        if self.converged:
            return ""
        cap = int(self.params.get("max_epochs", self.epochs))
        if self.section == "finetune":
            return (f"{name}: best epoch {self.best_epoch} of max {cap}: the fine-tuning may not have converged; "
                    "raise finetune.max_epochs (on a GPU: docs/finetuning.md)")
        return (f"{name}: best epoch {self.best_epoch} of max {cap}: the head may not have converged; "
                "raise train.max_epochs or train.lr")


@dataclasses.dataclass(frozen=True)
class Calibration:
    temperature: float
    val_loss_before: float
    val_loss_after: float
    method: str


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Per-class auto-accept thresholds chosen on the validation split (models/thresholds.py)."""

    target_precision: float
    split: str
    rule: str  # how a class earns a threshold, in words
    per_class: dict[str, float | None]  # None: never auto-accepted, every image of the class is reviewed
    accepted_images: dict[str, int]  # validation images at or above the threshold
    correct_images: dict[str, int]  # of those, correctly classified
    predicted_images: dict[str, int]  # validation images predicted as the class


@dataclasses.dataclass(frozen=True)
class ModelFile(Record):
    FORMAT = "plankton-transfer/model"
    VERSION = 2  # 1: "plankton-transfer-head/1", untyped, of plankton-transfer 0.2
    REMAKE = "train it again with dvc repro (the train stage writes model files)"

    name: str  # the model's name in params.yaml (models / finetune.models)
    backbone: str  # registry entry
    weights: WeightsInfo
    input: InputRecipe
    feature_dim: int
    classes: tuple[str, ...]
    head: LinearHead
    training: TrainingInfo
    calibration: Calibration
    thresholds: Thresholds
    data: DataInfo
    backbone_state: dict[str, torch.Tensor] | None = None  # fine-tuned backbone; None: the registry's weights

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    @property
    def pretrained(self) -> bool:
        return self.weights.pretrained

    def probabilities(self, features: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Class probabilities for (N, D) feature rows: temperature-scaled unless ``calibrated=False``."""
        return self.head.probabilities(features, self.temperature if calibrated else 1.0)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.head.logits(features)

    def fingerprint(self) -> str:
        """sha256 of everything that decides what the model predicts (classes, backbone and weights,
        input recipe, head, temperature, thresholds, a fine-tuned backbone), not of how long it
        took or where it ran: the same training gives the same fingerprint on any machine."""
        digest = hashlib.sha256()
        decisive = {"classes": self.classes, "backbone": self.backbone, "weights": self.weights.sha256,
                    "init_seed": self.weights.init_seed, "input": plain(self.input),
                    "temperature": self.calibration.temperature, "thresholds": plain(self.thresholds)}
        digest.update(json.dumps(decisive, sort_keys=True, default=str).encode())
        tensors = {"head.weight": self.head.weight, "head.bias": self.head.bias, **{
            f"backbone.{k}": v for k, v in (self.backbone_state or {}).items()}}
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        """Load and check a model file (plain tensors and values only: no code runs)."""
        data = load_tensor_file(path)
        if data.get("format") == "plankton-transfer-head/1":
            raise UserError(f"{path} was written by plankton-transfer 0.2 (model format plankton-transfer-head/1), "
                            f"which this version does not read; {cls.REMAKE}")
        model = cls.from_dict(data, path)
        check_model(model, path)
        return model


def check_model(model: ModelFile, source: str | Path) -> None:
    """Every value a model file's user relies on, or one line naming the file and the problem."""
    def bad(what: str) -> UserError:
        return UserError(f"{source}: {what}; the model file is damaged or was edited: train it again (dvc repro)")

    if not model.classes or not all(isinstance(c, str) and c for c in model.classes):
        raise bad("classes must be a non-empty list of names")
    if len(set(model.classes)) != len(model.classes):
        raise bad("a class name appears twice")
    weight, bias = model.head.weight, model.head.bias
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise bad("the head's weight and bias must be tensors")
    if tuple(weight.shape) != (len(model.classes), model.feature_dim) or tuple(bias.shape) != (len(model.classes),):
        raise bad(f"the head is {tuple(weight.shape)} + {tuple(bias.shape)}, but there are {len(model.classes)} "
                  f"classes of {model.feature_dim}-d features")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise bad("the head holds NaN or infinite numbers")
    t = model.calibration.temperature
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise bad(f"the temperature is {t!r}; it must be a positive number")
    if model.input.mode not in PREPROCESS_MODES:
        raise bad(f"the preprocessing mode is {model.input.mode!r}, not one of {', '.join(PREPROCESS_MODES)}")
    unknown = set(model.thresholds.per_class) - set(model.classes)
    if unknown:
        raise bad(f"thresholds name classes the model does not have: {', '.join(sorted(unknown))}")
    for name, value in model.thresholds.per_class.items():
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise bad(f"the threshold of {name} is {value!r}; it must be a probability or null")
    if model.backbone_state is not None and not all(isinstance(v, torch.Tensor) for v in model.backbone_state.values()):
        raise bad("the fine-tuned backbone state must hold tensors only")
