"""Benchmark: the study's training loop against this pipeline, in one process, on the same data.

(a) the study's loop: the frozen backbone re-run on every image at every step (batch 24,
    shuffled, 4 DataLoader workers, PIL Resize(256) + CenterCrop(224)), SGD on the new last
    layer, and after every epoch a full evaluation of the train and validation sets;
(b) this pipeline: extract features once (plankton_transfer/models/extraction.py: same loader and loop, same
    preprocessing), then train the head on them for the same epochs (plankton_transfer/models/heads.py).

Also measured: the compute-only forward images/s of the same backbone (random input,
same batch size, device and dtype), so extraction's fraction of the limit shows, and the
peak resident memory. Results go to a JSON file.

    python -m bench.study_vs_pipeline --classes 17 --per-class 100 --epochs 10 --model alexnet
    python -m bench.study_vs_pipeline --classes 20 --per-class 1000 --skip-study   # memory at 20k images
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bench.standin import build_standin
from plankton_transfer.data.features import feature_writer
from plankton_transfer.data.loading import ImageFiles, device_decodable, make_loader
from plankton_transfer.data.features import load_split
from plankton_transfer.data.preprocess import Normalize, TensorPreprocess, draft_size, make_transform
from plankton_transfer.models.backbones import get_backbone
from plankton_transfer.models.extraction import extract_features
from plankton_transfer.models.feature_net import FeatureExtractor, autocast_dtype, build_feature_network
from plankton_transfer.models.heads import RowGroup, fit_heads
from plankton_transfer.models.training import resident_rows
from plankton_transfer.models.weights import resolve_weights
from plankton_transfer.params.extract import ExtractParams
from plankton_transfer.params.train import TrainParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.runtime import environment, resolve_device
from plankton_transfer.settings import usable_cores

STUDY = {"lr": 0.001, "momentum": 0.9, "batch_size": 24, "workers": 4}


class StudyImageFolder(Dataset):
    """torchvision ImageFolder's behaviour: PIL open + convert('RGB') + the study's transform."""

    def __init__(self, items: list[tuple[Path, int]], transform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def study_transform(name: str) -> v2.Compose:
    pre = get_backbone(name).preprocess
    return v2.Compose([v2.Resize(pre.resize_size, antialias=True), v2.CenterCrop(pre.input_size),
                       v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])


def run_study(model: nn.Module, classes: int, train_items, val_items, name: str, epochs: int,
              device: torch.device) -> dict:
    """The study's script: model.train() for the pass (dropout active in the frozen classifier
    layers, as in its code), then evaluation of the whole train and valid sets every epoch."""
    torch.manual_seed(0)
    head = nn.Linear(get_backbone(name).feature_dim, classes)
    net = nn.Sequential(model, head).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=STUDY["lr"], momentum=STUDY["momentum"])
    loss_fn = nn.CrossEntropyLoss()
    tf = study_transform(name)
    loader = lambda items, shuffle: DataLoader(  # noqa: E731
        StudyImageFolder(items, tf), batch_size=STUDY["batch_size"], shuffle=shuffle,
        num_workers=STUDY["workers"], pin_memory=device.type == "cuda")
    train_loader, eval_train, eval_val = loader(train_items, True), loader(train_items, False), loader(val_items, False)
    start, history = time.perf_counter(), []
    for _ in range(epochs):
        net.train()
        for x, y in train_loader:
            loss = loss_fn(net(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            row = {}
            for split, dl in (("train", eval_train), ("val", eval_val)):
                total, correct, n = 0.0, 0, 0
                for x, y in dl:
                    out = net(x.to(device))
                    total += loss_fn(out, y.to(device)).item() * len(y)
                    correct += (out.argmax(1).cpu() == y).sum().item()
                    n += len(y)
                row[f"{split}_loss"], row[f"{split}_accuracy"] = total / n, correct / n
        history.append(row)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "per_epoch_s": round(seconds / epochs, 2), "final": history[-1]}


def run_pipeline(extractor: FeatureExtractor, name: str, items: dict[str, list], classes: int, epochs: int,
                 cfg: ExtractParams, workers: int, workdir: Path) -> dict:
    pre = get_backbone(name).preprocess
    paths = [str(p) for split in ("train", "val") for p, _ in items[split]]
    plain_jpegs = pd.DataFrame({"format": ["JPEG"] * len(paths), "converted": [False] * len(paths)})  # the stand-in
    dataset = ImageFiles(Path("/"), paths, make_transform(pre, "crop"), ImageParams(), draft_size(pre, "crop"),
                         device_decodable(plain_jpegs, cfg.decode))
    device = extractor.device
    sizes = {"train": len(items["train"]), "val": len(items["val"])}
    start = time.perf_counter()
    with feature_writer(workdir, sizes, get_backbone(name).feature_dim) as writer:
        n = extract_features(extractor, make_loader(dataset, cfg.batch_size, workers, device), writer,
                             TensorPreprocess(pre, "crop"))
    extract_s = time.perf_counter() - start
    for split in sizes:
        np.save(workdir / f"{split}_labels.npy", np.array([y for _, y in items[split]], dtype=np.int64))
    start = time.perf_counter()
    parts = [load_split(workdir, s) for s in sizes]
    x = resident_rows([features for features, _ in parts], device)
    y = torch.from_numpy(np.concatenate([labels for _, labels in parts])).to(device)
    protocol = TrainParams(lr=STUDY["lr"], momentum=STUDY["momentum"], batch_size=STUDY["batch_size"],
                           max_epochs=epochs, patience=epochs + 1)
    group = RowGroup(np.arange(sizes["train"]), np.arange(sizes["train"], len(y)))
    result = fit_heads(x, y, [group], classes, protocol, seed=0, history=True)  # the project's one trainer
    train_s = time.perf_counter() - start
    last = {k: v[0] for k, v in result.history[-1].items()}
    return {"extract_s": round(extract_s, 2), "train_s": round(train_s, 2), "seconds": round(extract_s + train_s, 2),
            "extract_images_per_s": round(n / extract_s, 1), "final": last}


@torch.inference_mode()
def forward_only(model: nn.Module, name: str, batch: int, device: torch.device, dtype, seconds: float = 8.0) -> float:
    """Compute-only images/s: random uint8 batches already in memory, normalise + forward."""
    pre = get_backbone(name).preprocess
    normalize = Normalize(pre.mean, pre.std).to(device)
    x = torch.randint(0, 255, (batch, 3, pre.input_size, pre.input_size), dtype=torch.uint8, device=device)
    step = lambda: model(normalize(x).contiguous(memory_format=torch.channels_last))  # noqa: E731
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        step()
        sync(device)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds or n < 3 * batch:
            step()
            n += batch
        sync(device)
    return n / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def split_items(root: Path, val_per_class: float) -> tuple[dict[str, list], int]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    items: dict[str, list] = {"train": [], "val": []}
    for label, folder in enumerate(folders):
        files = sorted(folder.glob("*.jpg"))
        n_val = max(1, int(len(files) * val_per_class))
        items["val"] += [(f, label) for f in files[:n_val]]
        items["train"] += [(f, label) for f in files[n_val:]]
    return items, len(folders)


def peak_rss_mb() -> dict[str, float]:
    to_mb = 1 / 1024  # ru_maxrss is in KiB on Linux
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb, 1),
            "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--classes", type=int, default=17)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data", type=Path, help="an existing class-folder dataset (default: build a stand-in)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=0, help="extraction batch (default: 32 on CPU, 256 on CUDA)")
    p.add_argument("--workers", type=int, default=-1, help="extraction DataLoader workers (-1: pipeline default)")
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "device"], help="as extract.decode")
    p.add_argument("--skip-study", action="store_true", help="only the pipeline (for memory measurements)")
    p.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    data = args.data or build_standin(args.cache_dir / f"standin-{args.classes}x{args.per_class}", args.classes,
                                      args.per_class, workers=usable_cores())
    items, classes = split_items(data, 0.2)
    batch = args.batch_size or (256 if device.type == "cuda" else 32)
    cfg = ExtractParams(preprocess="crop", batch_size=batch, decode=args.decode)
    weights = resolve_weights(args.model, get_backbone(args.model).weights, PretrainedParams(on_missing="random"))
    extractor = FeatureExtractor(build_feature_network(args.model, weights, seed=0), device,
                                 autocast_dtype(cfg.dtype, device))
    model = extractor.network.backbone
    result = {"model": args.model, "weights": weights.describe(), "images": sum(len(v) for v in items.values()),
              "classes": classes, "epochs": args.epochs, "extract_batch_size": batch, "decode": args.decode,
              "environment": environment(device), "cpu_count": os.cpu_count(), "usable_cores": usable_cores()}
    result["forward_only_images_per_s"] = round(forward_only(model, args.model, batch, device, extractor.dtype), 1)
    with tempfile.TemporaryDirectory() as workdir:
        result["pipeline"] = run_pipeline(extractor, args.model, items, classes, args.epochs, cfg, args.workers,
                                          Path(workdir))
    result["extraction_fraction_of_forward"] = round(
        result["pipeline"]["extract_images_per_s"] / result["forward_only_images_per_s"], 3)
    result["peak_rss_mb_pipeline"] = peak_rss_mb()
    if not args.skip_study:
        result["study"] = run_study(model, classes, items["train"], items["val"], args.model, args.epochs, device)
        result["speedup"] = round(result["study"]["seconds"] / result["pipeline"]["seconds"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result, args.out)
    return result


def print_summary(r: dict, out: Path) -> None:
    env = r["environment"]
    print(f"\n{r['model']} ({r['weights']}), {r['images']} images, {r['classes']} classes, {r['epochs']} epochs, "
          f"{env['device']} ({env['device_name']}, {env['cpu_threads']} threads)")
    print(f"  compute-only forward:         {r['forward_only_images_per_s']:>9.1f} images/s (batch {r['extract_batch_size']})")
    pl = r["pipeline"]
    print(f"  pipeline extraction:          {pl['extract_images_per_s']:>9.1f} images/s "
          f"({100 * r['extraction_fraction_of_forward']:.0f}% of forward)")
    print(f"  pipeline extract + train:     {pl['seconds']:>9.2f} s (extract {pl['extract_s']} s, train {pl['train_s']} s)")
    if "study" in r:
        print(f"  study loop:                   {r['study']['seconds']:>9.2f} s ({r['study']['per_epoch_s']} s/epoch)")
        print(f"  speed-up:                     {r['speedup']:>9.1f}x")
        print(f"  final val accuracy study / pipeline: {r['study']['final']['val_accuracy']:.3f} / "
              f"{pl['final']['val_accuracy']:.3f}")
    print(f"  peak memory (MB): {r['peak_rss_mb_pipeline']}")
    print(f"  results: {out}")


if __name__ == "__main__":
    main()
