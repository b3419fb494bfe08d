"""Running a frozen backbone once over every image of every split, into the feature store.

The study re-ran the frozen network on every image in every epoch; a frozen backbone gives
the same features every time, so computing them once is exact and turns hours into seconds.
Images go through the project's one feature path (models/feature_net.py). The fine-tuning
stage writes its model's features the same way, with the fine-tuned backbone's ``state``.
With ``extract.tta``, each validation and test row is the mean over the image's 8 dihedral
views (data/tta.py); the train rows stay single-view.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from plankton_transfer.data.tta import mean_of_views
from plankton_transfer.data.features import SPLITS, join_shards, rows_writer
from plankton_transfer.data.loading import ImageFiles, decode_on_device, default_workers, device_decodable, make_loader
from plankton_transfer.data.preprocess import TensorPreprocess, crop_fits, draft_size, make_transform
from plankton_transfer.data.split_files import class_counts, split_fingerprint
from plankton_transfer.distributed import Ranks, agree, current_ranks, process_group, rank_device, share
from plankton_transfer.distributed import shared_output_folder
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import get_backbone
from plankton_transfer.models.feature_net import (FeatureExtractor, autocast_dtype, build_feature_network,
                                                  count_parameters)
from plankton_transfer.models.provenance import DataInfo, FeatureMeta, InputRecipe, WeightsInfo
from plankton_transfer.models.weights import ResolvedWeights, resolve_weights
from plankton_transfer.params.extract import ExtractParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.runtime import FreedMemoryReturner, environment, resolve_device, seed_everything
from plankton_transfer.runtime import use_deterministic_algorithms
from plankton_transfer.settings import RunSettings

RETURN_FREED_EVERY = 8  # batches between hand-backs of freed memory: a flat peak at no measurable cost


@dataclasses.dataclass(frozen=True)
class FineTunedBackbone:
    """A fine-tuned backbone's weights (the stripped network's state dict) and how it was tuned, in words."""

    state: dict[str, torch.Tensor]
    description: str  # e.g. "fine-tuned (all 9 blocks)"


def extract_features(extractor: FeatureExtractor, loader: DataLoader, writer,
                     tensor_preprocess: TensorPreprocess | None = None, tta_from: int | None = None) -> int:
    """One pass of ``loader`` through ``extractor``; rows go to ``writer``. Returns the row count.
    Rows from ``tta_from`` on (the loader's row numbers) are test-time augmented."""
    offset = 0
    return_freed = FreedMemoryReturner(RETURN_FREED_EVERY)  # flat, repeatable peak memory (runtime.py)
    for images, errors, raw in tqdm(loader, desc="extract", unit="batch", mininterval=2.0):
        if errors:
            raise UserError(unusable_file_message(errors[0]))
        if isinstance(images, list):
            images = decode_on_device(images, raw, extractor.device, tensor_preprocess)
        rows = batch_features(extractor, images, None if tta_from is None else tta_from - offset)
        writer.write(offset, rows)
        offset += len(rows)
        return_freed()
    return offset


def batch_features(extractor: FeatureExtractor, images: torch.Tensor, tta_from: int | None) -> np.ndarray:
    """Feature rows of a batch; from row ``tta_from`` on (when given), the mean of the 8 views."""
    if tta_from is None or tta_from >= len(images):
        return extractor(images)
    cut = max(0, tta_from)
    parts = [extractor(images[:cut])] if cut else []
    return np.concatenate(parts + [mean_of_views(extractor, images[cut:])])


def unusable_file_message(error: str) -> str:
    """Why the extract stage stops at a file the filter stage kept, and what to do."""
    if "too elongated for crop mode" in error:
        return f"cannot use {error}"
    return f"cannot read {error}; the file changed since the filter stage: run dvc repro again"


def class_names(rows: pd.DataFrame) -> tuple[str, ...]:
    """Class names indexed by label."""
    pairs = rows[["label", "class"]].drop_duplicates().sort_values("label")
    assert pairs["label"].tolist() == list(range(len(pairs))), "labels must be 0..C-1, one per class"
    return tuple(pairs["class"].tolist())


def rank_workers(workers: int, device: torch.device, ranks: Ranks) -> int:
    """DataLoader processes of one rank: PLANKTON_WORKERS, or with -1 the automatic count
    divided among the ranks of the node (they share its cores)."""
    return workers if workers >= 0 else max(1, default_workers(device) // ranks.local_world)


def weights_info(weights: ResolvedWeights, seed: int) -> WeightsInfo:
    return WeightsInfo(source=weights.source, pretrained=weights.pretrained, sha256=weights.sha256,
                       file=Path(weights.path).name if weights.path else "", description=weights.describe(),
                       check=weights.check, init_seed=seed)


def feature_meta(model_name: str, raw: Path, parts: dict[str, pd.DataFrame], rows: pd.DataFrame,
                 weights: ResolvedWeights, recipe: InputRecipe, extractor: FeatureExtractor, seconds: float,
                 decoded: int, ranks: Ranks, seed: int, tta: bool = False, fine_tuned: str = "") -> FeatureMeta:
    info = weights_info(weights, seed)
    if fine_tuned:
        info = dataclasses.replace(info, description=f"{info.description}, {fine_tuned}")
    return FeatureMeta(
        backbone=model_name, weights=info, input=recipe, tta=tta,
        feature_dim=get_backbone(model_name).feature_dim,
        backbone_parameters=count_parameters(extractor.network.backbone), classes=class_names(rows),
        data=DataInfo(source=str(raw), split_sha256=split_fingerprint(parts), class_counts=class_counts(parts)),
        seconds=round(seconds, 3), images_per_s=round(len(rows) / seconds, 1) if seconds > 0 else None,
        decoded_on_device=decoded, environment={**environment(extractor.device), "processes": ranks.world})


def run_extraction(model_name: str, raw: Path, parts: dict[str, pd.DataFrame], out_dir: Path, cfg: ExtractParams,
                   image_cfg: ImageParams, pretrained_cfg: PretrainedParams, seed: int,
                   settings: RunSettings, fine_tuned: FineTunedBackbone | None = None) -> FeatureMeta | None:
    """Write ``out_dir`` (features, labels, meta.json) for backbone ``model_name``; returns the meta.

    Under torchrun each rank extracts its share of the rows into its own shard; rank 0 joins
    them, writes labels and meta.json, renames the folder into place and returns the meta
    (the other ranks return None). The result is the one-process run's, row for row.
    ``fine_tuned``: the backbone's fine-tuned weights (the finetune stage), loaded after ``weights``."""
    backbone = get_backbone(model_name)
    weights = resolve_weights(model_name, backbone.weights, pretrained_cfg)  # before any compute: fails fast
    ranks = current_ranks()
    device = rank_device(resolve_device(settings.device), ranks)
    seed_everything(seed)
    use_deterministic_algorithms()
    state = fine_tuned.state if fine_tuned else None
    extractor = FeatureExtractor(build_feature_network(model_name, weights, seed, state), device,
                                 autocast_dtype(cfg.dtype, device))
    recipe = InputRecipe(mode=cfg.preprocess, preprocess=backbone.preprocess, image=image_cfg)
    rows = pd.concat([parts[s] for s in SPLITS], ignore_index=True)
    # crop mode: an image too elongated to resize goes to Pillow, whose CentreCrop refuses it in one line
    fits = (lambda w, h: crop_fits(w, h, recipe.preprocess, image_cfg.max_pixels)) if recipe.mode == "crop" else None
    on_device = device_decodable(rows, cfg.decode, fits)
    dataset = ImageFiles(raw, rows["path"].tolist(), make_transform(recipe.preprocess, recipe.mode, image_cfg),
                         image_cfg, draft_size(recipe.preprocess, recipe.mode), on_device,
                         sha256=rows["sha256"].tolist())
    sizes = {s: len(parts[s]) for s in SPLITS}
    lo, hi = share(len(rows), cfg.batch_size, ranks)
    with process_group(ranks, device) as group, shared_output_folder(out_dir, ranks, group) as tmp:
        start = time.perf_counter()
        error = None
        try:
            with rows_writer(tmp, sizes, backbone.feature_dim, ranks.rank, ranks.world, lo, hi) as writer:
                loader = make_loader(dataset if ranks.world == 1 else Subset(dataset, range(lo, hi)), cfg.batch_size,
                                     rank_workers(settings.workers, device, ranks), device)
                tta_from = len(parts["train"]) - lo if cfg.tta else None  # SPLITS order: train rows first
                n = extract_features(extractor, loader, writer, TensorPreprocess(recipe.preprocess, recipe.mode),
                                     tta_from)
                assert n == hi - lo, "every row of the share was written"
        except UserError as err:
            error = str(err)
        agree(error, ranks, group)
        if not ranks.leader:
            return None
        join_shards(tmp, sizes, backbone.feature_dim, [share(len(rows), cfg.batch_size, Ranks(r, ranks.world))
                                                        for r in range(ranks.world)])
        for s in SPLITS:
            np.save(tmp / f"{s}_labels.npy", parts[s]["label"].to_numpy(dtype=np.int64))
        meta = feature_meta(model_name, raw, parts, rows, weights, recipe, extractor, time.perf_counter() - start,
                            int(sum(dataset.raw)), ranks, seed, cfg.tta, fine_tuned.description if fine_tuned else "")
        meta.save_json(tmp / "meta.json")
    return meta
