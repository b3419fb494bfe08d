"""Stage extract@<model>: run the frozen backbone once over every image of every split.

Inputs:  ``--split-dir``/{train,val,test}.csv, the images under ``--raw``, the backbone's
         weight file (resolved as in stages/weights.py).
Outputs: ``--out-dir`` (see stages/features.py): float16 features with labels per split, and
         meta.json (backbone, weight source and sha256, preprocessing, classes, images/s).
Params:  ``extract``, ``image``, ``pretrained``, ``base.seed``.

The study re-ran the frozen network on every image in every epoch; a frozen backbone gives
the same features every time, so computing them once is exact and turns hours into seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from stages.backbones import build_feature_extractor, count_parameters, get_backbone, resolve_backbone_weights
from stages.common import (BaseParams, UserError, atomic_path, check_choice, read_params, run_cli, section,
                           write_json)
from stages.features import SPLITS, feature_writer
from stages.images import ImageConfig
from stages.loading import ImageFiles, decode_on_device, device_decodable, make_loader
from stages.preprocess import MODES, Normalize, TensorPreprocess, draft_size, make_transform
from stages.runtime import environment, resolve_device, seed_everything, use_deterministic_algorithms
from stages.weights import PretrainedParams


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    preprocess: str = "pad"  # pad | crop (the study's Resize(256) + CenterCrop(224))
    batch_size: int = 32
    workers: int = -1  # DataLoader processes; -1: cores - 1 on CPU, up to 16 with CUDA
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    decode: str = "auto"  # auto: plain JPEGs decoded on the GPU when extracting on CUDA | cpu | device

    def __post_init__(self) -> None:
        check_choice("extract.preprocess", self.preprocess, MODES)
        check_choice("extract.dtype", self.dtype, ("auto", "fp32", "bf16"))
        check_choice("extract.decode", self.decode, ("auto", "cpu", "device"))
        if self.batch_size < 1:
            raise UserError("params.yaml: extract.batch_size must be >= 1")


def autocast_dtype(cfg: ExtractParams, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@torch.inference_mode()
def extract_features(model, normalize, loader: DataLoader, writer, device: torch.device,
                     dtype: torch.dtype | None, tensor_preprocess: TensorPreprocess | None = None) -> int:
    """One pass of ``loader`` through ``model``; rows go to ``writer``. Returns the row count."""
    offset = 0
    for images, errors, raw in tqdm(loader, desc="extract", unit="batch", mininterval=2.0):
        if errors:
            raise UserError(f"cannot read {errors[0]}; the file changed since the filter stage: run dvc repro again")
        if isinstance(images, list):
            images = decode_on_device(images, raw, device, tensor_preprocess)
        # channels_last is faster for these convnets on CUDA (tensor cores) and on CPU (oneDNN) alike
        x = normalize(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            feats = model(x)
        writer.write(offset, feats.float().cpu().numpy().astype(np.float16))
        offset += len(feats)
    return offset


def read_splits(split_dir: Path) -> dict[str, pd.DataFrame]:
    parts = {}
    for s in SPLITS:
        path = split_dir / f"{s}.csv"
        if not path.is_file():
            raise UserError(f"{path} not found; run the split stage first (dvc repro)")
        parts[s] = pd.read_csv(path, keep_default_na=False)
    return parts


def run_extraction(model_name: str, raw: Path, split_dir: Path, out_dir: Path, params: dict) -> dict:
    cfg, image_cfg = section(ExtractParams, params, "extract"), section(ImageConfig, params, "image")
    pretrained_cfg, seed = section(PretrainedParams, params, "pretrained"), section(BaseParams, params, "base").seed
    backbone = get_backbone(model_name)
    weights = resolve_backbone_weights(model_name, pretrained_cfg)  # before any compute: fails fast
    parts = read_splits(split_dir)
    device = resolve_device(cfg.device)
    seed_everything(seed)
    use_deterministic_algorithms()
    model = build_feature_extractor(model_name, weights, seed).to(device).to(memory_format=torch.channels_last)
    rows = pd.concat([parts[s] for s in SPLITS], ignore_index=True)
    transform = make_transform(backbone.preprocess, cfg.preprocess)
    dataset = ImageFiles(raw, rows["path"].tolist(), transform, image_cfg, draft_size(backbone.preprocess, cfg.preprocess),
                         device_decodable(rows, cfg.decode, device))
    normalize = Normalize(backbone.preprocess.mean, backbone.preprocess.std).to(device)
    sizes = {s: len(parts[s]) for s in SPLITS}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        start = time.perf_counter()
        with feature_writer(tmp, sizes, backbone.feature_dim) as writer:
            n = extract_features(model, normalize, make_loader(dataset, cfg.batch_size, cfg.workers, device), writer, device,
                                 autocast_dtype(cfg, device), TensorPreprocess(backbone.preprocess, cfg.preprocess))
        seconds = time.perf_counter() - start
        for s in SPLITS:
            np.save(tmp / f"{s}_labels.npy", parts[s]["label"].to_numpy(dtype=np.int64))
        meta = {
            "backbone": model_name,
            "weights": {"source": weights.source, "pretrained": weights.pretrained, "sha256": weights.sha256,
                        "file": Path(weights.path).name if weights.path else "", "description": weights.describe(),
                        "init_seed": seed},
            "preprocess": {"mode": cfg.preprocess, **dataclasses.asdict(backbone.preprocess)},
            "feature_dim": backbone.feature_dim,
            "backbone_parameters": count_parameters(model),
            "classes": class_names(rows),
            "sizes": sizes,
            "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 1) if seconds > 0 else None,
            "decoded_on_device": int(sum(dataset.raw)),
            "environment": environment(device),
        }
        write_json(tmp / "meta.json", meta)
    return meta


def class_names(rows: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = rows[["label", "class"]].drop_duplicates().sort_values("label")
    assert pairs["label"].tolist() == list(range(len(pairs))), "labels must be 0..C-1, one per class"
    return pairs["class"].tolist()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="backbone name from stages/backbones.py")
    p.add_argument("--raw", type=Path, required=True, help="image folder (params: data.raw)")
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    meta = run_extraction(args.model, args.raw, args.split_dir, args.out_dir, read_params(args.params))
    print(f"extract {args.model}: {sum(meta['sizes'].values())} images, {meta['feature_dim']}-d features, "
          f"{meta['images_per_s']} images/s, weights: {meta['weights']['description']}")
    return meta


if __name__ == "__main__":
    run_cli(main)
