"""Classifying new images with a model file: the exact backbone, input recipe and head it was
trained with, so an image gets the class the pipeline's evaluation gives it.

Images go through the extract stage's path: the same opening rules (the model file's
``image`` settings: background, size limits), JPEG draft size, letterbox or crop, and the one
feature path (models/feature_net.py: normalisation on the device, channels_last, bf16
autocast on CUDA, features rounded to float16 as the feature store keeps them); then the
model file's calibrated head. Images are decoded in DataLoader workers; an image that cannot
be read becomes a row with its error. With ``tta`` (``plankton-predict --tta``), an image's
features are the mean over its 8 dihedral views (data/tta.py), as the extract stage
computes the validation and test features with ``extract.tta``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from plankton_transfer.data.tta import mean_of_views
from plankton_transfer.data.images import BadImage
from plankton_transfer.data.predictions import UNKNOWN
from plankton_transfer.data.loading import default_workers
from plankton_transfer.data.preprocess import draft_size, make_transform
from plankton_transfer.data.sources import Item, load_item, readable
from plankton_transfer.models.feature_net import FeatureExtractor, autocast_dtype, network_for
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.thresholds import review_flags
from plankton_transfer.models.unknown import UnknownDetector
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.records import plain
from plankton_transfer.runtime import resolve_device, use_usable_cores


def features_fingerprint(model: ModelFile) -> str:
    """sha256 of what decides an image's *features* under ``model`` (backbone and weights, input
    recipe, a fine-tuned backbone), not of its head: ``ModelFile.fingerprint()`` changes with every
    retrained head, this does not, so features cached for one model (``plankton-select``'s pool,
    data/feature_cache.py) serve the next round's."""
    digest = hashlib.sha256()
    decisive = {"backbone": model.backbone, "weights": model.weights.sha256, "init_seed": model.weights.init_seed,
                "input": plain(model.input), "feature_dim": model.feature_dim}
    digest.update(json.dumps(decisive, sort_keys=True, default=str).encode())
    for name in sorted(model.backbone_state or {}):
        digest.update(f"backbone.{name}".encode())
        digest.update(model.backbone_state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Predictor:
    """A model file made ready to classify: feature path on its device, preprocessing, head."""

    model: ModelFile
    extractor: FeatureExtractor
    transform: Callable
    draft: int
    image: ImageParams  # how files are opened: the model file's, unless overridden on purpose
    tta: bool = False  # test-time augmentation: features averaged over the 8 dihedral views

    def features(self, images: torch.Tensor) -> np.ndarray:
        """float16 feature rows of a batch of preprocessed images (the mean of the 8 views with ``tta``)."""
        return mean_of_views(self.extractor, images) if self.tta else self.extractor(images)

    @property
    def device(self) -> torch.device:
        return self.extractor.device


def load_predictor(model: ModelFile, pretrained_cfg: PretrainedParams, device: str = "auto", dtype: str = "auto",
                   image: ImageParams | None = None, tta: bool = False) -> Predictor:
    """The feature path, preprocessing and head of ``model`` on ``device`` (auto: CUDA if present)."""
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        use_usable_cores()
    recipe = model.input
    image = image or recipe.image
    extractor = FeatureExtractor(network_for(model, pretrained_cfg), torch_device, autocast_dtype(dtype, torch_device))
    return Predictor(model=model, extractor=extractor, transform=make_transform(recipe.preprocess, recipe.mode, image),
                     draft=draft_size(recipe.preprocess, recipe.mode), image=image, tta=tta)


class ItemImages(Dataset):
    """Items as preprocessed uint8 tensors; a failure is returned with its reason, not raised."""

    def __init__(self, items: list[Item], transform: Callable, image_cfg: ImageParams, draft: int) -> None:
        self.items, self.transform, self.image_cfg, self.draft = items, transform, image_cfg, draft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(load_item(self.items[i], self.image_cfg, self.draft)), i, ""
        except (BadImage, OSError) as err:  # an OSError names the file: keep the CSV writable
            return torch.zeros(0, dtype=torch.uint8), i, readable(str(err))
        except (MemoryError, OverflowError, ValueError) as err:  # absurd sizes in a damaged file: its own row
            return torch.zeros(0, dtype=torch.uint8), i, f"unreadable image: {type(err).__name__}: {err}"


def collate(batch: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, e in batch if not e]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], [(i, e) for _, i, e in batch if e]


def classify_features(predictor: Predictor, items: list[Item], batch_size: int = 32,
                      workers: int = -1) -> tuple[dict[int, np.ndarray], dict[int, str], float]:
    """Features (float16 rows) of every readable item, the errors of the others, and the seconds."""
    errors = {i: item.error for i, item in enumerate(items) if item.error}
    todo = [i for i in range(len(items)) if i not in errors]
    workers = default_workers(predictor.device) if workers < 0 else workers
    loader = DataLoader(ItemImages([items[i] for i in todo], predictor.transform, predictor.image, predictor.draft),
                        batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=predictor.device.type == "cuda")
    features: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    for images, done, failed in tqdm(loader, desc="predict", unit="batch", mininterval=2.0, disable=not todo):
        errors.update({todo[i]: why for i, why in failed})
        if images is not None:
            features.update(zip((todo[i] for i in done), predictor.features(images)))
    return features, errors, time.perf_counter() - start


@dataclasses.dataclass
class Classified:
    table: pd.DataFrame  # one row per item (result_table)
    proba: np.ndarray  # (classified rows, classes): calibrated probabilities, in item order
    rows: list[int]  # the item index of each row of ``proba``
    seconds: float


def classify_items(predictor: Predictor, items: list[Item], batch_size: int = 32, workers: int = -1,
                   top_k: int = 3, detector: UnknownDetector | None = None) -> Classified:
    """Every item classified (see :func:`result_table`), flagged unknown by ``detector`` where it
    scores over its threshold, with the seconds spent."""
    features, errors, seconds = classify_features(predictor, items, batch_size, workers)
    done = sorted(features)
    rows = np.stack([features[i] for i in done]) if done else np.zeros((0, predictor.model.feature_dim), np.float16)
    matrix = predictor.model.probabilities(rows)
    proba = dict(zip(done, matrix))
    unknown = None if detector is None else dict(zip(done, detector.unknown_scores(predictor.model, rows)))
    table = result_table(predictor.model, items, proba, errors, top_k, unknown,
                         None if detector is None else detector.threshold)
    return Classified(table, matrix, done, seconds)


def review_reasons(model: ModelFile, predicted: np.ndarray, probability: np.ndarray) -> list[str]:
    """Why each image needs a person, in words ('' for an image accepted automatically)."""
    flags = review_flags(model.thresholds, model.classes, predicted, probability)
    reasons = []
    for flag, c, p in zip(flags, predicted, probability):
        limit = model.thresholds.per_class.get(model.classes[c])
        if not flag:
            reasons.append("")
        elif limit is None and not model.pretrained:
            reasons.append("always reviewed: the backbone is NOT pretrained")
        elif limit is None:
            reasons.append("always reviewed: too few validation images support an auto-accept threshold for "
                           f"{model.classes[c]}")
        elif not np.isfinite(p):
            reasons.append("no valid probability")
        else:
            reasons.append(f"probability under the class threshold {limit:.4f}")
    return reasons


def result_table(model: ModelFile, items: list[Item], proba: dict[int, np.ndarray], errors: dict[int, str],
                 top_k: int, unknown: dict[int, float] | None = None,
                 unknown_threshold: float | None = None) -> pd.DataFrame:
    """Columns: id, file, sample, predicted, probability, needs_review, review_reason, threshold,
    [unknown_score, best_class,] top2_class, top2_probability, ... topK, error (empty when the
    image was classified). With ``unknown`` scores (models/unknown.py), an image scoring over
    ``unknown_threshold`` is predicted ``unknown`` and reviewed; ``best_class`` keeps the class
    the head gave it, and ``probability`` that class's probability."""
    classes = model.classes
    k = max(1, min(top_k, len(classes)))
    done = sorted(proba)
    matrix = np.stack([proba[i] for i in done]) if done else np.zeros((0, len(classes)))
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    best = matrix[np.arange(len(done)), order[:, 0]] if done else np.zeros(0)
    reasons = review_reasons(model, order[:, 0], best) if done else []
    rows = {}
    for n, i in enumerate(done):
        top = [(classes[c], round(float(matrix[n, c]), 4)) for c in order[n]]
        limit = model.thresholds.per_class.get(top[0][0])
        row = {"predicted": top[0][0], "probability": top[0][1], "needs_review": bool(reasons[n]),
               "review_reason": reasons[n], "threshold": None if limit is None else round(limit, 6)}
        if unknown is not None:
            score = float(unknown[i])
            row |= {"unknown_score": round(score, 6), "best_class": top[0][0]}
            if score > unknown_threshold:
                row |= {"predicted": UNKNOWN, "needs_review": True,
                        "review_reason": f"unknown: its unknown score {score:.4g} is over the threshold "
                                         f"{unknown_threshold:.4g}; no trained class fits it"}
        for rank, (name, p) in enumerate(top[1:], start=2):
            row.update({f"top{rank}_class": name, f"top{rank}_probability": p})
        rows[i] = row
    unread = {"needs_review": True, "review_reason": "not classified (see error)"}
    table = pd.DataFrame([{"id": item.id, "file": item.file, "sample": item.sample, **rows.get(i, unread),
                           "error": errors.get(i, "")} for i, item in enumerate(items)])
    columns = ["id", "file", "sample", "predicted", "probability", "needs_review", "review_reason", "threshold"]
    columns += ["unknown_score", "best_class"] if unknown is not None else []
    columns += [f"top{r}_{kind}" for r in range(2, k + 1) for kind in ("class", "probability")] + ["error"]
    return table.reindex(columns=columns)
