"""The feature store: one float16 matrix per split, written row by row as it is computed.

Layout of a features folder (one per backbone):
    train.npy, val.npy, test.npy                  float16 (N, D), memory-mapped .npy
    train_labels.npy, val_labels.npy, ...         int64 (N,)
    meta.json                                     backbone, weights, preprocessing, classes, timing

Memory does not grow with the dataset: rows go straight to the memory-mapped files.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from plankton_transfer.errors import UserError
from plankton_transfer.files import read_json

SPLITS = ("train", "val", "test")  # the order rows are stored in


class FeatureWriter:
    """Route rows of a single pass over all splits (train, then val, then test) to their files."""

    def __init__(self, folder: Path, sizes: dict[str, int], dim: int) -> None:
        self.names = [s for s in SPLITS if sizes.get(s)]
        self.starts = np.cumsum([0] + [sizes[s] for s in self.names])
        self.arrays = {
            s: np.lib.format.open_memmap(folder / f"{s}.npy", mode="w+", dtype=np.float16, shape=(sizes[s], dim))
            for s in self.names
        }

    def write(self, offset: int, rows: np.ndarray) -> None:
        """Write ``rows`` at global row ``offset`` (may straddle two splits)."""
        end = offset + len(rows)
        for i, name in enumerate(self.names):
            lo, hi = max(offset, self.starts[i]), min(end, self.starts[i + 1])
            if lo < hi:
                self.arrays[name][lo - self.starts[i]:hi - self.starts[i]] = rows[lo - offset:hi - offset]

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()


@contextlib.contextmanager
def feature_writer(folder: Path, sizes: dict[str, int], dim: int) -> Iterator[FeatureWriter]:
    writer = FeatureWriter(folder, sizes, dim)
    try:
        yield writer
    finally:
        writer.close()


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (memory-mapped float16) and labels of one split."""
    folder = Path(folder)
    path = folder / f"{split}.npy"
    if not path.is_file():
        raise UserError(f"{path} not found; run the extract stage first (dvc repro)")
    return np.load(path, mmap_mode="r"), np.load(folder / f"{split}_labels.npy")


def load_meta(folder: str | Path) -> dict:
    return read_json(Path(folder) / "meta.json")
