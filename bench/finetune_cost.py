"""Benchmark: what one epoch of fine-tuning costs (the finetune stage's loop), against a forward pass.

On a folder of class sub-folders (default: the bundled FlowCam sample; ``--standin K N``: the
K x N stand-in of bench/standin.py), split 80/10/10 per class (seeded), for each ``--unfreeze``:
``--epochs`` epochs of plankton_transfer/models/finetuning.py ``finetune`` (augmented training
images, the validation images after every epoch, a checkpoint per epoch), the seconds of each
epoch (the first includes one-off set-up: reported, and left out of the median), and in the
same process the forward-only images/s of the frozen backbone on the same preprocessed images,
so the ratio stays readable on a machine busy with other work. Results go to a JSON file.

    python -m bench.finetune_cost --unfreeze all 1 --epochs 4
    python -m bench.finetune_cost --standin 17 1000 --batch-size 256 --device cuda --workers 16   # a GPU node
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.standin import SAMPLE, build_standin
from plankton_transfer.data.images import is_image_name
from plankton_transfer.data.loading import make_loader
from plankton_transfer.models import finetuning
from plankton_transfer.models.backbones import get_backbone
from plankton_transfer.models.feature_net import FeatureExtractor, autocast_dtype, build_feature_network
from plankton_transfer.models.provenance import InputRecipe
from plankton_transfer.params.augment import AugmentParams
from plankton_transfer.params.finetune import FinetuneParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.runtime import environment, resolve_device
from plankton_transfer.settings import RunSettings

SPLIT = (0.8, 0.1)  # train, val; the rest is test


def split_folder(raw: Path, seed: int) -> dict[str, pd.DataFrame]:
    """Each class's images shuffled (seeded) and cut 80/10/10, as the split stage's CSVs hold them."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in raw.iterdir() if p.is_dir())
    parts: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        files = sorted(p for p in (raw / name).rglob("*") if p.is_file() and is_image_name(p.name))
        order = rng.permutation(len(files))
        cut = [round(len(files) * SPLIT[0]), round(len(files) * (SPLIT[0] + SPLIT[1]))]
        for split, chosen in zip(parts, np.split(order, cut)):
            parts[split] += [{"path": files[i].relative_to(raw).as_posix(), "class": name, "label": label,
                              "sha256": hashlib.sha256(files[i].read_bytes()).hexdigest()} for i in chosen]
    return {split: pd.DataFrame(rows) for split, rows in parts.items()}


def forward_images_per_s(plan: finetuning.Plan, images: finetuning.Images, batch_size: int, settings: RunSettings,
                         seed: int) -> float:
    """The frozen feature path's images/s on the train images (decoding included, as in an epoch)."""
    device = resolve_device(settings.device)
    extractor = FeatureExtractor(build_feature_network(plan.backbone.name, plan.weights, seed), device,
                                 autocast_dtype("auto", device))
    loader = make_loader(images.files("train"), batch_size, settings.workers, device)
    for batch, _, _ in loader:  # once to warm up (one-off kernel set-up)
        extractor(batch)
        break
    start, n = time.perf_counter(), 0
    for batch, _, _ in loader:
        extractor(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def measure(unfreeze: str | int, images: finetuning.Images, args: argparse.Namespace, work: Path) -> dict:
    cfg = FinetuneParams(models=(args.model,), unfreeze=unfreeze, max_epochs=args.epochs, patience=args.epochs,
                         batch_size=args.batch_size)
    plan = finetuning.plan_finetuning(args.model, cfg, PretrainedParams())
    settings = RunSettings(device=args.device, workers=args.workers)
    forward = forward_images_per_s(plan, images, args.batch_size, settings, args.seed)
    load = os.getloadavg()[0]
    result = finetuning.finetune(plan, images, cfg, AugmentParams(), args.seed, settings, work / f"checkpoints-{unfreeze}")
    epochs = [round(row["seconds"], 2) for row in result.history]
    steady = epochs[1:] or epochs
    n_train, n_val = len(images.parts["train"]), len(images.parts["val"])
    return {"unfreeze": unfreeze, "trained_blocks": list(plan.blocks), "epoch_seconds": epochs,
            "median_epoch_seconds": round(statistics.median(steady), 2),
            "train_images_per_s": round(n_train / statistics.median(steady), 1),
            "forward_images_per_s": round(forward, 1), "train_images": n_train, "val_images": n_val,
            "val_accuracy": [round(r["val_accuracy"], 3) for r in result.history],
            "load_average": round(load, 2), "batch_size": args.batch_size}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", type=Path, default=SAMPLE, help="class folders (default: the bundled sample)")
    p.add_argument("--standin", type=int, nargs=2, metavar=("CLASSES", "PER_CLASS"), help="build and use the stand-in")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--unfreeze", nargs="+", default=["all", "1"], help="head | all | N | a block's name, each measured")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=Path("bench/results/finetune_cost.json"))
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = build_standin(Path(tmp) / "standin", *args.standin, workers=os.cpu_count() or 1) if args.standin \
            else args.raw
        parts = split_folder(raw, args.seed)
        recipe = InputRecipe(mode="pad", preprocess=get_backbone(args.model).preprocess)
        images = finetuning.Images(raw, parts, recipe)
        for unfreeze in args.unfreeze:
            results.append(measure(int(unfreeze) if unfreeze.isdigit() else unfreeze, images, args, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "environment": environment(resolve_device(args.device))},
                                   indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
