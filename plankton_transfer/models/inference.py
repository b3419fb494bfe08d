"""Classifying new images with a model file: the exact backbone, preprocessing and head it was
trained with."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from plankton_transfer.data.images import BadImage, load_rgb
from plankton_transfer.data.preprocess import Normalize, Preprocess, make_transform
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import build_feature_extractor, get_backbone
from plankton_transfer.models.heads import head_probabilities
from plankton_transfer.models.weights import RANDOM_INIT, ResolvedWeights, resolve_weights
from plankton_transfer.params import ImageParams, PretrainedParams


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


def classify(record: dict, paths: list[Path], cfg: PretrainedParams, image_cfg: ImageParams,
             batch_size: int = 32) -> pd.DataFrame:
    """One row per path: predicted class and probability, or the reason it could not be read."""
    model = backbone_for(record, cfg)
    pre = Preprocess.from_record(record["preprocess"])
    transform, normalize = make_transform(pre, record["preprocess"]["mode"]), Normalize(pre.mean, pre.std)
    rows = []
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for path in paths[start:start + batch_size]:
            try:
                batch.append(transform(load_rgb(path, image_cfg)))
                names.append(path)
            except (BadImage, OSError) as err:
                rows.append({"path": str(path), "predicted": "", "probability": None, "error": str(err)})
        if batch:
            with torch.inference_mode():
                proba = head_probabilities(record, model(normalize(torch.stack(batch))).numpy())
            for path, p in zip(names, proba):
                rows.append({"path": str(path), "predicted": record["classes"][int(p.argmax())],
                             "probability": round(float(p.max()), 4), "error": ""})
    return pd.DataFrame(rows, columns=["path", "predicted", "probability", "error"])
