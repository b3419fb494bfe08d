"""Classifying new images with a model file: the exact backbone, preprocessing and head it was
trained with, so an image gets the class the pipeline's evaluation gives it.

The path is the extract stage's (same loader, JPEG draft size, letterbox or crop, device
normalisation, channels_last, bf16 autocast on CUDA), the features are rounded to float16 as
the feature store keeps them, and the head is the model file's
(:func:`~plankton_transfer.models.heads.head_probabilities`). Images are decoded in
DataLoader workers; an image that cannot be read becomes a row with its error.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from plankton_transfer.data.images import BadImage
from plankton_transfer.data.loading import default_workers
from plankton_transfer.data.preprocess import Normalize, Preprocess, draft_size, make_transform
from plankton_transfer.data.sources import Item, load_item, readable
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import build_feature_extractor, get_backbone
from plankton_transfer.models.extraction import autocast_dtype
from plankton_transfer.models.heads import head_probabilities
from plankton_transfer.models.thresholds import review_flags
from plankton_transfer.models.weights import RANDOM_INIT, ResolvedWeights, resolve_weights
from plankton_transfer.params import ExtractParams, ImageParams, PretrainedParams
from plankton_transfer.runtime import resolve_device


def backbone_for(record: dict, cfg: PretrainedParams) -> torch.nn.Module:
    """Rebuild the exact backbone the head was trained on."""
    recorded = record["weights"]
    if recorded["pretrained"]:
        weights = resolve_weights(record["backbone"], get_backbone(record["backbone"]).weights,
                                  PretrainedParams(on_missing="error", dir=cfg.dir))
        if weights.sha256 != recorded["sha256"]:
            raise UserError(f"{weights.path} is not the weight file this model was trained with "
                            f"(sha256 {recorded['sha256'][:16]}...); put that file in {cfg.dir}/{record['backbone']}/")
    else:
        weights = ResolvedWeights(source=RANDOM_INIT)
    return build_feature_extractor(record["backbone"], weights, seed=recorded["init_seed"])


@dataclasses.dataclass
class Predictor:
    """A model file made ready to classify: backbone on its device, preprocessing, head."""

    record: dict
    model: torch.nn.Module
    normalize: Normalize
    transform: Callable
    draft: int
    device: torch.device
    dtype: torch.dtype | None


def load_predictor(record: dict, pretrained_cfg: PretrainedParams, extract_cfg: ExtractParams) -> Predictor:
    """The backbone, preprocessing and head of ``record`` on ``extract.device`` (auto: CUDA if present)."""
    device = resolve_device(extract_cfg.device)
    model = backbone_for(record, pretrained_cfg).to(device).to(memory_format=torch.channels_last)
    pre, mode = Preprocess.from_record(record["preprocess"]), record["preprocess"]["mode"]
    return Predictor(record=record, model=model, normalize=Normalize(pre.mean, pre.std).to(device),
                     transform=make_transform(pre, mode), draft=draft_size(pre, mode), device=device,
                     dtype=autocast_dtype(extract_cfg, device))


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


def collate(batch: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, e in batch if not e]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], [(i, e) for _, i, e in batch if e]


@torch.inference_mode()
def class_probabilities(predictor: Predictor, images: torch.Tensor) -> np.ndarray:
    """(N, classes) probabilities for a batch of preprocessed uint8 images."""
    x = predictor.normalize(images.to(predictor.device, non_blocking=True))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(predictor.device.type, dtype=predictor.dtype, enabled=predictor.dtype is not None):
        features = predictor.model(x)
    stored = features.float().cpu().numpy().astype(np.float16)  # as the feature store keeps them
    return head_probabilities(predictor.record, stored)


def classify_items(predictor: Predictor, items: list[Item], image_cfg: ImageParams, batch_size: int = 32,
                   workers: int = -1, top_k: int = 3) -> tuple[pd.DataFrame, float]:
    """One row per item (see :func:`result_table`) and the seconds spent classifying."""
    errors = {i: item.error for i, item in enumerate(items) if item.error}
    todo = [i for i in range(len(items)) if i not in errors]
    workers = default_workers(predictor.device) if workers < 0 else workers
    loader = DataLoader(ItemImages([items[i] for i in todo], predictor.transform, image_cfg, predictor.draft),
                        batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=predictor.device.type == "cuda")
    proba: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    for images, done, failed in tqdm(loader, desc="predict", unit="batch", mininterval=2.0, disable=not todo):
        errors.update({todo[i]: why for i, why in failed})
        if images is not None:
            proba.update(zip((todo[i] for i in done), class_probabilities(predictor, images)))
    seconds = time.perf_counter() - start
    return result_table(predictor.record, items, proba, errors, top_k), seconds


def result_table(record: dict, items: list[Item], proba: dict[int, np.ndarray], errors: dict[int, str],
                 top_k: int) -> pd.DataFrame:
    """Columns: id, file, predicted, probability, needs_review, threshold, top2_class,
    top2_probability, ... topK, error (empty when the image was classified)."""
    classes = record["classes"]
    k = max(1, min(top_k, len(classes)))
    done = sorted(proba)
    matrix = np.stack([proba[i] for i in done]) if done else np.zeros((0, len(classes)))
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :k]
    review = review_flags(record, order[:, 0], matrix[np.arange(len(done)), order[:, 0]])
    per_class = (record.get("thresholds") or {}).get("per_class", {})
    rows = {}
    for n, i in enumerate(done):
        top = [(classes[c], round(float(matrix[n, c]), 4)) for c in order[n]]
        row = {"predicted": top[0][0], "probability": top[0][1], "needs_review": bool(review[n]),
               "threshold": None if per_class.get(top[0][0]) is None else round(per_class[top[0][0]], 6)}
        for rank, (name, p) in enumerate(top[1:], start=2):
            row.update({f"top{rank}_class": name, f"top{rank}_probability": p})
        rows[i] = row
    table = pd.DataFrame([{"id": item.id, "file": item.file, **rows.get(i, {"needs_review": True}),
                           "error": errors.get(i, "")} for i, item in enumerate(items)])
    columns = ["id", "file", "predicted", "probability", "needs_review", "threshold"]
    columns += [f"top{r}_{kind}" for r in range(2, k + 1) for kind in ("class", "probability")] + ["error"]
    return table.reindex(columns=columns)
