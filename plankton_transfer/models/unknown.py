"""A model's unknown detector: one post-hoc score (evaluation/openset.py) and its threshold,
fitted by the openset stage on the model's own training and validation features, stored beside
the model file as ``<model>.unknown.pt`` so predict can say "unknown" for an image of no trained
class.

The file holds plain tensors and values (loaded with ``weights_only``), only what the chosen
score needs: nothing for ``msp`` and ``energy`` (the model's head and temperature suffice), the
class means and the covariance's Cholesky factor for ``mahalanobis``, the origin, basis and
scale of the principal subspace for ``vim``. It names the model's fingerprint: a detector fitted
for another training of the model is refused.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.openset import Scorers, fit_unknown_scorers, known_threshold
from plankton_transfer.files import atomic_path
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.torch_files import load_tensor_file
from plankton_transfer.records import Record

SUFFIX = ".unknown.pt"
NEEDS = {"msp": (), "energy": (), "mahalanobis": ("class_means", "covariance_factor"),
         "vim": ("vim_origin", "vim_basis")}


def detector_path(model_path: str | Path) -> Path:
    """``models/<name>.pt`` -> ``models/<name>.unknown.pt``."""
    path = Path(model_path)
    return path.with_name(path.name.removesuffix(".pt").removesuffix(".pth") + SUFFIX)


@dataclasses.dataclass(frozen=True)
class UnknownDetector(Record):
    FORMAT = "plankton-transfer/unknown-detector"
    VERSION = 1
    REMAKE = "run dvc repro (the openset stage writes it again)"

    model: str
    model_fingerprint: str
    score: str  # a key of evaluation/openset.py SCORES; higher means more likely unknown
    chosen_by: str
    threshold: float  # a score above it: unknown
    target_known_kept: float
    val_known_kept: float  # of the model's known validation images, kept at the threshold
    vim_alpha: float
    tensors: dict[str, torch.Tensor]  # what the score needs (NEEDS), float32

    def scorers(self, model: ModelFile) -> Scorers:
        """The model's head and temperature with this detector's fitted parts."""
        head = Scorers.from_head(model.head.weight.double().numpy(), model.head.bias.double().numpy(),
                                 model.temperature)
        fitted = {name: self.tensors[name].double().numpy() for name in NEEDS[self.score]}
        return dataclasses.replace(head, vim_alpha=self.vim_alpha, **fitted)

    def unknown_scores(self, model: ModelFile, features: np.ndarray) -> np.ndarray:
        """(N,) scores of (N, D) feature rows; an image scoring above ``threshold`` is unknown."""
        return self.scorers(model).score(self.score, features)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def load_for(cls, path: str | Path, model: ModelFile) -> UnknownDetector:
        """Load and check a detector file (plain tensors only) against the model it must belong to."""
        detector = cls.from_dict(load_tensor_file(path), path)
        missing = [n for n in NEEDS.get(detector.score, ()) if n not in detector.tensors]
        if detector.score not in NEEDS or missing:
            raise UserError(f"{path}: the {detector.score!r} score lacks {', '.join(missing) or 'a definition'}; "
                            f"the file is damaged or was edited: {cls.REMAKE}")
        if detector.model_fingerprint != model.fingerprint():
            raise UserError(f"{path} was fitted for another training of {detector.model} than this model file; "
                            f"{cls.REMAKE}, or pass --no-unknown")
        return detector


def fit_detector(model: ModelFile, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 score: str, chosen_by: str, target_known_kept: float) -> UnknownDetector:
    """The detector of ``score`` for ``model``: fitted on its training features (x, y), its
    threshold the smallest score keeping ``target_known_kept`` of its validation images, scored
    as predict will score them (with the stored float32 tensors)."""
    scorers = fit_unknown_scorers(np.asarray(train[0]), train[1], model.head.weight.double().numpy(),
                                  model.head.bias.double().numpy(), model.temperature)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(scorers, name), dtype=np.float32))
               for name in NEEDS[score]}
    detector = UnknownDetector(model=model.name, model_fingerprint=model.fingerprint(), score=score,
                               chosen_by=chosen_by, threshold=float("inf"), target_known_kept=target_known_kept,
                               val_known_kept=1.0, vim_alpha=scorers.vim_alpha, tensors=tensors)
    val_scores = detector.unknown_scores(model, np.asarray(val[0]))
    threshold = known_threshold(val_scores, target_known_kept)
    return dataclasses.replace(detector, threshold=threshold, val_known_kept=float((val_scores <= threshold).mean()))
