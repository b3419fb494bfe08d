"""The feature store: one float16 matrix per split, written row by row as it is computed.

Layout of a features folder (one per backbone):
    train.npy, val.npy, test.npy                  float16 (N, D), memory-mapped .npy
    train_labels.npy, val_labels.npy, ...         int64 (N,)
    meta.json                                     backbone, weights, preprocessing, classes, timing

Memory does not grow with the dataset: rows go straight to the memory-mapped files.
Their disk blocks are reserved up front (after checking the free space), because a write
into a memory-mapped file on a full disk kills the process with SIGBUS instead of raising.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from plankton_transfer.data.split_files import SPLITS  # the order rows are stored in
from plankton_transfer.errors import UserError

NPY_HEADER_BYTES = 128  # numpy's header for a 2-d float16 array (version 1.0 format)


def store_bytes(sizes: dict[str, int], dim: int) -> int:
    """Disk space of a feature store: float16 rows plus int64 labels, headers included."""
    rows = sum(sizes.values())
    return rows * (dim * 2 + 8) + 2 * NPY_HEADER_BYTES * len(SPLITS)


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def require_free_space(folder: Path, needed: int) -> None:
    """One line before any row is computed, rather than SIGBUS or ENOSPC halfway through."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(f"not enough free disk space for the features in {folder}: they need {megabytes(needed)}, "
                        f"{megabytes(free)} is free; free some space there and run again")


def reserve_blocks(path: Path) -> None:
    """Allocate the disk blocks of a freshly created (sparse) memory-mapped file now."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the free-space check has to do
        return
    with path.open("r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"not enough free disk space for {path} ({err.strerror}); free some space there "
                                "and run again") from None
            if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system without fallocate
                raise


class FeatureWriter:
    """Route rows of a single pass over all splits (train, then val, then test) to their files."""

    def __init__(self, folder: Path, sizes: dict[str, int], dim: int) -> None:
        self.names = [s for s in SPLITS if sizes.get(s)]
        self.starts = np.cumsum([0] + [sizes[s] for s in self.names])
        require_free_space(folder, store_bytes(sizes, dim))
        self.arrays = {}
        for s in self.names:
            path = folder / f"{s}.npy"
            self.arrays[s] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(sizes[s], dim))
            reserve_blocks(path)

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


class ShardWriter:
    """One rank's contiguous rows ``[lo, hi)`` of the single pass, in a file of its own
    (ranks on different nodes never write to the same file, whatever the file system)."""

    def __init__(self, path: Path, lo: int, hi: int, dim: int) -> None:
        self.lo = lo
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(hi - lo, dim)) if hi > lo else None

    def write(self, offset: int, rows: np.ndarray) -> None:
        """``offset`` counts from the start of the shard, as the rank's loader does."""
        assert self.array is not None
        self.array[offset:offset + len(rows)] = rows

    def close(self) -> None:
        if self.array is not None:
            self.array.flush()
            self.array = None


def shard_path(folder: Path, rank: int) -> Path:
    return folder / f".rank-{rank:05d}.npy"


@contextlib.contextmanager
def rows_writer(folder: Path, sizes: dict[str, int], dim: int, rank: int, world: int, lo: int,
                hi: int) -> Iterator[FeatureWriter | ShardWriter]:
    """The split files themselves for one process; rank ``rank``'s shard of ``world`` otherwise."""
    writer = FeatureWriter(folder, sizes, dim) if world == 1 else ShardWriter(shard_path(folder, rank), lo, hi, dim)
    try:
        yield writer
    finally:
        writer.close()


def join_shards(folder: Path, sizes: dict[str, int], dim: int, shares: list[tuple[int, int]],
                chunk_rows: int = 65536) -> None:
    """Copy the ranks' shards, in rank order, into the split files, then remove them
    (nothing to do for one process, whose rows went to the split files directly)."""
    if len(shares) == 1:
        return
    with feature_writer(folder, sizes, dim) as writer:
        for rank, (lo, hi) in enumerate(shares):
            if hi == lo:
                continue
            shard = np.load(shard_path(folder, rank), mmap_mode="r")
            assert shard.shape == (hi - lo, dim), f"rank {rank} wrote {shard.shape[0]} of {hi - lo} rows"
            for start in range(0, hi - lo, chunk_rows):
                writer.write(lo + start, np.asarray(shard[start:start + chunk_rows]))
            del shard
            shard_path(folder, rank).unlink()  # written by rank `rank` of this run


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (memory-mapped float16) and labels of one split."""
    folder = Path(folder)
    path = folder / f"{split}.npy"
    if not path.is_file():
        raise UserError(f"{path} not found; run the extract stage first (dvc repro)")
    return np.load(path, mmap_mode="r"), np.load(folder / f"{split}_labels.npy")
