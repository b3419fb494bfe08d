"""Feeding images to a backbone: a DataLoader whose workers decode with Pillow, or hand
plain JPEG bytes to the device to decode (nvJPEG on CUDA) where that is faster.

Used by stages/extract.py and the benchmark (bench/study_vs_pipeline.py).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from plankton_transfer.data.images import BadImage, decode_rgb, load_rgb
from plankton_transfer.data.preprocess import TensorPreprocess
from plankton_transfer.params.image import ImageParams
from plankton_transfer.settings import usable_cores


class ImageFiles(Dataset):
    """Images listed in a manifest, as preprocessed uint8 tensors, or as the file's raw bytes
    where ``raw[i]`` (a plain JPEG left for the device to decode). A file that fails to load
    is reported, not raised inside a worker (where the message would drown in a traceback).

    With ``sha256`` (the manifest's column), each file's bytes are checked against it as they
    are read: a file replaced after the filter stage (a test image overwritten with a train
    image would leak silently) is reported instead of used. It costs one hash of bytes that
    are read anyway."""

    def __init__(self, root: Path, paths: list[str], transform, image_cfg: ImageParams, draft: int,
                 raw: list[bool] | None = None, sha256: list[str] | None = None) -> None:
        self.root, self.paths, self.transform = root, paths, transform
        self.image_cfg, self.draft = image_cfg, draft
        self.raw = raw or [False] * len(paths)
        self.sha256 = sha256

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, bool]:
        path = self.root / self.paths[i]
        try:
            if self.sha256 is None and not self.raw[i]:
                return self.transform(load_rgb(path, self.image_cfg, self.draft)), "", False
            data = read_checked(path, self.sha256[i] if self.sha256 is not None else None)
            if self.raw[i]:
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), "", True
            img, _, _ = decode_rgb(io.BytesIO(data), self.image_cfg, self.draft)
            return self.transform(img), "", False
        except (BadImage, OSError) as err:
            return torch.zeros(0, dtype=torch.uint8), f"{self.paths[i]}: {err}", False


def read_checked(path: Path, sha256: str | None) -> bytes:
    """The file's bytes, checked against ``sha256`` when given: hashed as a stream first, so a
    huge file put in an image's place is never read into memory."""
    with path.open("rb") as f:
        if sha256 is not None:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != sha256:
                raise BadImage("content differs from the manifest", f"sha256 {digest[:12]}..., "
                               f"filtered as {sha256[:12]}...")
            f.seek(0)
        return f.read()


def collate(batch: list[tuple[torch.Tensor, str, bool]]) -> tuple[torch.Tensor | list | None, list[str], list[bool]]:
    """Stack preprocessed images; a batch holding raw JPEG bytes stays a list."""
    errors = [e for _, e, _ in batch if e]
    raw = [r for _, _, r in batch]
    if errors:
        return None, errors, raw
    return (list(x for x, _, _ in batch) if any(raw) else torch.stack([x for x, _, _ in batch])), errors, raw


def decode_on_device(items: list[torch.Tensor], raw: list[bool], device: torch.device,
                     tensor_preprocess: TensorPreprocess) -> torch.Tensor:
    """Decode the raw JPEGs of a batch in one torchvision call on ``device`` (nvJPEG on CUDA),
    preprocess them there, and stack them with the images the workers prepared."""
    encoded = [x for x, r in zip(items, raw) if r]
    decoded = iter(tensor_preprocess.many(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
                   if encoded else ())
    return torch.stack([next(decoded) if r else x.to(device) for x, r in zip(items, raw)])


def default_workers(device: torch.device) -> int:
    """DataLoader processes: one per usable core, but one core left to the main process on the
    CPU (it runs the model), and at most 16 feeding a GPU."""
    cores = usable_cores()
    return min(16, cores) if device.type == "cuda" else max(1, cores - 1)


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """``workers`` < 0: one per core but one on CPU (the main process runs the model), up to 16 on CUDA."""
    workers = default_workers(device) if workers < 0 else workers
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False,
    )


def device_decodable(rows: pd.DataFrame, decode: str, fits: Callable[[int, int], bool] | None = None) -> list[bool]:
    """Which files the device decodes: with decode 'device', plain JPEGs (no conversion needed)
    whose size (the manifest's width and height) ``fits`` the preprocessing (crop mode: not too
    elongated, :func:`~plankton_transfer.data.preprocess.crop_fits`; the others go through
    Pillow, which refuses them in one line instead of resizing them on the device); the rest,
    and everything with 'auto' or 'cpu', go through Pillow in the DataLoader workers.

    'auto' means the workers because they were faster where it was measured: on one H100 with
    16 cores, AlexNet extraction of 17,000 255 px JPEGs ran at 3,430-3,886 images/s with
    Pillow workers against 2,368 with nvJPEG (bench/reference/gpu-h100-17x1000/). GPU
    decoding may win where a GPU has only a few cores to feed it."""
    if decode != "device":
        return [False] * len(rows)
    if "format" not in rows or "converted" not in rows:
        return [False] * len(rows)
    converted = rows["converted"].astype(str).str.lower() == "true"
    plain = ((rows["format"] == "JPEG") & ~converted).tolist()
    if fits is None:
        return plain
    if "width" not in rows or "height" not in rows:
        return [False] * len(rows)
    return [p and fits(int(w), int(h)) for p, w, h in zip(plain, rows["width"], rows["height"])]
