"""The extraction loop alone, with glibc malloc settings to compare: how its memory grows.

Runs the extract stage's loop (the same loader, AlexNet, channels_last input) over the first
``--batches`` batches of the 20 x 1000 stand-in and prints the anonymous memory (what
malloc holds) every 25 batches, the peak and the images/s. Run several settings at the same
time to compare their speed under the same load:

    python -m bench.allocator --batches 100                      # before: one float buffer per batch, no trim
    python -m bench.allocator --batches 100 --reuse --trim-every 8  # what the extract stage does
    python -m bench.allocator --batches 100 --mmap-threshold 1048576
    python -m bench.allocator --batches 100 --arena-max 1
"""
from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
import time
from pathlib import Path

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc malloc.h


def status_mb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--reuse", action="store_true", help="one input buffer for every batch (the stage's way)")
    p.add_argument("--trim-every", type=int, default=0, help="malloc_trim(0) every N batches (0: never)")
    p.add_argument("--mmap-threshold", type=int, default=0, help="mallopt(M_MMAP_THRESHOLD) in bytes (0: glibc's)")
    p.add_argument("--arena-max", type=int, default=0, help="mallopt(M_ARENA_MAX) (0: glibc's)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench")
    args = p.parse_args(argv)
    libc = ctypes.CDLL("libc.so.6")
    if args.mmap_threshold:  # before torch is imported, so every allocation sees it
        libc.mallopt(M_MMAP_THRESHOLD, args.mmap_threshold)
    if args.arena_max:
        libc.mallopt(M_ARENA_MAX, args.arena_max)

    import numpy as np
    import torch

    from bench.standin import build_standin
    from plankton_transfer.data.loading import ImageFiles, make_loader
    from plankton_transfer.data.preprocess import draft_size, make_transform
    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.feature_net import FeatureExtractor, build_feature_network
    from plankton_transfer.models.weights import resolve_weights
    from plankton_transfer.params.image import ImageParams
    from plankton_transfer.params.pretrained import PretrainedParams

    raw = build_standin(args.cache_dir / "standin-20x1000", 20, 1000)
    paths = sorted(str(q.relative_to(raw)) for q in raw.glob("*/*.jpg"))[:args.batches * 32]
    backbone = get_backbone("alexnet")
    weights = resolve_weights("alexnet", backbone.weights, PretrainedParams(dir=str(args.cache_dir / "no-weights")))
    extractor = FeatureExtractor(build_feature_network("alexnet", weights, 0), torch.device("cpu"), None)
    dataset = ImageFiles(raw, paths, make_transform(backbone.preprocess, "pad"), ImageParams(),
                         draft_size(backbone.preprocess, "pad"))
    network = extractor.network
    trace, start = [], time.perf_counter()
    with torch.inference_mode():
        for i, (images, _, _) in enumerate(make_loader(dataset, 32, -1, torch.device("cpu"))):
            if args.reuse:  # the pipeline's path: one reused normalisation buffer
                extractor(images)
            else:
                x = network.normalize(images).contiguous(memory_format=torch.channels_last)
                network.backbone(x).float().numpy().astype(np.float16)
            if args.trim_every and (i + 1) % args.trim_every == 0:
                libc.malloc_trim(0)
            if i % 25 == 0:
                trace.append(status_mb("RssAnon"))
    result = {"settings": {k: v for k, v in vars(args).items() if k != "cache_dir"},
              "images_per_s": round(len(paths) / (time.perf_counter() - start), 1),
              "anon_mb_every_25_batches": trace, "anon_mb_end": status_mb("RssAnon"), "peak_mb": status_mb("VmHWM")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
