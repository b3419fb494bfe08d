"""Running a frozen backbone once over every image of every split, into the feature store.

The study re-ran the frozen network on every image in every epoch; a frozen backbone gives
the same features every time, so computing them once is exact and turns hours into seconds.
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

from plankton_transfer.data.features import SPLITS, join_shards, rows_writer
from plankton_transfer.data.loading import ImageFiles, decode_on_device, default_workers, device_decodable, make_loader
from plankton_transfer.data.preprocess import Normalize, TensorPreprocess, draft_size, make_transform
from plankton_transfer.distributed import (Ranks, agree, current_ranks, kill_rank_for_tests, process_group,
                                           rank_device, share, shared_output_folder)
from plankton_transfer.errors import UserError
from plankton_transfer.files import write_json
from plankton_transfer.models.backbones import build_feature_extractor, count_parameters, get_backbone
from plankton_transfer.models.backbones import resolve_backbone_weights
from plankton_transfer.params import ExtractParams, ImageParams, PretrainedParams
from plankton_transfer.runtime import (FreedMemoryReturner, environment, resolve_device, seed_everything,
                                       use_deterministic_algorithms)

RETURN_FREED_EVERY = 8  # batches between hand-backs of freed memory: a flat peak at no measurable cost


def autocast_dtype(cfg: ExtractParams, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def normalize_into(buffer: torch.Tensor | None, images: torch.Tensor,
                   normalize: Normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalize(images)`` in channels_last layout, written into one float buffer reused from
    batch to batch (returned with the view of it that holds this batch).

    channels_last is faster for these convnets on CUDA (tensor cores) and on CPU (oneDNN)
    alike. Writing into the same buffer saves four allocations of the batch's size per batch
    (the float copy, two arithmetic results, the layout change), the same values."""
    if buffer is None or buffer.shape[1:] != images.shape[1:] or len(buffer) < len(images):
        buffer = torch.empty(images.shape, dtype=torch.float32, device=images.device,
                             memory_format=torch.channels_last)
    x = buffer[:len(images)]
    x.copy_(images)  # uint8 -> float32 and NCHW -> NHWC in one pass
    return x.mul_(normalize.scale).sub_(normalize.shift), buffer


@torch.inference_mode()
def extract_features(model, normalize, loader: DataLoader, writer, device: torch.device,
                     dtype: torch.dtype | None, tensor_preprocess: TensorPreprocess | None = None,
                     after_batch=None) -> int:
    """One pass of ``loader`` through ``model``; rows go to ``writer``. Returns the row count."""
    offset = 0
    buffer = None
    return_freed = FreedMemoryReturner(RETURN_FREED_EVERY)  # flat, repeatable peak memory (runtime.py)
    for images, errors, raw in tqdm(loader, desc="extract", unit="batch", mininterval=2.0):
        if errors:
            raise UserError(f"cannot read {errors[0]}; the file changed since the filter stage: run dvc repro again")
        if isinstance(images, list):
            images = decode_on_device(images, raw, device, tensor_preprocess)
        x, buffer = normalize_into(buffer, images.to(device, non_blocking=True), normalize)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            feats = model(x)
        writer.write(offset, feats.float().cpu().numpy().astype(np.float16))
        offset += len(feats)
        return_freed()
        if after_batch is not None:
            after_batch()
    return offset


def class_names(rows: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = rows[["label", "class"]].drop_duplicates().sort_values("label")
    assert pairs["label"].tolist() == list(range(len(pairs))), "labels must be 0..C-1, one per class"
    return pairs["class"].tolist()


def rank_workers(workers: int, device: torch.device, ranks: Ranks) -> int:
    """DataLoader processes of one rank: ``extract.workers``, or with -1 the automatic count
    divided among the ranks of the node (they share its cores)."""
    return workers if workers >= 0 else max(1, default_workers(device) // ranks.local_world)


def run_extraction(model_name: str, raw: Path, parts: dict[str, pd.DataFrame], out_dir: Path, cfg: ExtractParams,
                   image_cfg: ImageParams, pretrained_cfg: PretrainedParams, seed: int) -> dict | None:
    """Write ``out_dir`` (features, labels, meta.json) for backbone ``model_name``; returns the meta.

    Under torchrun each rank extracts its share of the rows into its own shard; rank 0 joins
    them, writes labels and meta.json, renames the folder into place and returns the meta
    (the other ranks return None). The result is the one-process run's, row for row."""
    backbone = get_backbone(model_name)
    weights = resolve_backbone_weights(model_name, pretrained_cfg)  # before any compute: fails fast
    ranks = current_ranks()
    device = rank_device(resolve_device(cfg.device), ranks)
    seed_everything(seed)
    use_deterministic_algorithms()
    model = build_feature_extractor(model_name, weights, seed).to(device).to(memory_format=torch.channels_last)
    rows = pd.concat([parts[s] for s in SPLITS], ignore_index=True)
    transform = make_transform(backbone.preprocess, cfg.preprocess)
    dataset = ImageFiles(raw, rows["path"].tolist(), transform, image_cfg, draft_size(backbone.preprocess, cfg.preprocess),
                         device_decodable(rows, cfg.decode), sha256=rows["sha256"].tolist())
    normalize = Normalize(backbone.preprocess.mean, backbone.preprocess.std).to(device)
    sizes = {s: len(parts[s]) for s in SPLITS}
    lo, hi = share(len(rows), cfg.batch_size, ranks)
    with process_group(ranks, device) as group, shared_output_folder(out_dir, ranks, group) as tmp:
        start = time.perf_counter()
        error = None
        try:
            with rows_writer(tmp, sizes, backbone.feature_dim, ranks.rank, ranks.world, lo, hi) as writer:
                loader = make_loader(dataset if ranks.world == 1 else Subset(dataset, range(lo, hi)), cfg.batch_size,
                                     rank_workers(cfg.workers, device, ranks), device)
                n = extract_features(model, normalize, loader, writer, device, autocast_dtype(cfg, device),
                                     TensorPreprocess(backbone.preprocess, cfg.preprocess), lambda: kill_rank_for_tests(ranks))
                assert n == hi - lo, "every row of the share was written"
        except UserError as err:
            error = str(err)
        agree(error, ranks, group)
        if not ranks.leader:
            return None
        join_shards(tmp, sizes, backbone.feature_dim, [share(len(rows), cfg.batch_size, Ranks(r, ranks.world))
                                                        for r in range(ranks.world)])
        seconds = time.perf_counter() - start
        for s in SPLITS:
            np.save(tmp / f"{s}_labels.npy", parts[s]["label"].to_numpy(dtype=np.int64))
        meta = {
            "backbone": model_name,
            "weights": {"source": weights.source, "pretrained": weights.pretrained, "sha256": weights.sha256,
                        "file": Path(weights.path).name if weights.path else "", "description": weights.describe(),
                        "check": weights.check, "init_seed": seed},
            "preprocess": {"mode": cfg.preprocess, **dataclasses.asdict(backbone.preprocess)},
            "feature_dim": backbone.feature_dim,
            "backbone_parameters": count_parameters(model),
            "classes": class_names(rows),
            "sizes": sizes,
            "seconds": round(seconds, 3),
            "images_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None,
            "decoded_on_device": int(sum(dataset.raw)),
            "environment": {**environment(device), "processes": ranks.world},
        }
        write_json(tmp / "meta.json", meta)
    return meta
