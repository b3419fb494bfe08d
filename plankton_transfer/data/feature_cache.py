"""Features of images outside the pipeline, extracted once: ``plankton-select``'s pool cache.

The pipeline's feature store (data/features.py) holds the features of the training images,
made by the extract stage. A pool of new, unlabelled images is not a pipeline input, so its
features are kept here instead, for as long as the user keeps the folder, and a second
selection (another strategy, another count, the next round with a retrained head) reads
them back instead of running the backbone again.

Layout of one cache folder (one per feature path: ``<root>/<features key>/``, the key from
models/inference.py ``features_fingerprint``: backbone, weights, input recipe, a fine-tuned
backbone; not the head, which changes every round of the labelling loop):

    meta.json                 format, the key, the feature dimension, the backbone
    part-<stamp>.npy          float16 (N, D): the rows one run extracted (the feature store's dtype)
    part-<stamp>.csv          key, id: the item each row belongs to (row i of the .npy)

Each run that extracts anything adds one part, its .npy first and its .csv second, each with
the atomic writer (plankton_transfer/files.py): an index never names rows that are not
there, and two runs at once add two parts rather than overwrite each other. Nothing is ever
removed or rewritten; a cache folder can be deleted whole at any time (it is only a cache).

An item's key (:func:`item_key`) is the sha256 of what its pixels come from: the image
file's real path, size and modification time; for an IFCB ROI the ``.roi`` file's real path,
size and modification time and the ROI's start byte, width and height. A changed or moved
file is extracted again; its old row stays unused.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.data.sources import Item, readable
from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path, write_csv, write_json

FORMAT = "plankton-transfer/feature-cache"
VERSION = 1
META = "meta.json"


def item_key(item: Item) -> str | None:
    """The cache key of ``item`` (module docstring); None for an item known to be unusable or
    whose file cannot be examined (it is then extracted, and fails, every time)."""
    if item.error:
        return None
    try:
        if item.roi is not None:
            path, start, width, height = item.roi
            st = os.stat(path)
            identity = ["roi", os.path.realpath(path), st.st_size, st.st_mtime_ns, start, width, height]
        else:
            st = os.stat(item.path)
            identity = ["file", os.path.realpath(item.path), st.st_size, st.st_mtime_ns]
    except OSError:
        return None
    text = "\0".join(str(part) for part in identity)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class FeatureCache:
    """The cache folder of one feature path (``root / key[:16]``)."""

    def __init__(self, root: Path, key: str, dim: int, backbone: str) -> None:
        self.folder = Path(root) / key[:16]
        self.key, self.dim, self.backbone = key, dim, backbone
        self.meta = {"format": FORMAT, "version": VERSION, "features_key": key, "feature_dim": dim,
                     "backbone": backbone}
        self._rows: dict[str, np.ndarray] | None = None

    def check(self) -> None:
        """Refuse, before any work, a folder that is not this feature path's cache."""
        root = self.folder.parent
        if (root.exists() or root.is_symlink()) and not root.is_dir():
            raise UserError(f"--features-cache {root} exists and is not a folder; give a folder for the feature cache "
                            "(nothing was changed)")
        if self.folder.exists() or self.folder.is_symlink():
            if not self.folder.is_dir():
                raise UserError(f"feature cache {self.folder} exists and is not a folder; remove it or give another "
                                "--features-cache (nothing was changed)")
            meta = self.folder / META
            if not meta.is_file():
                if any(self.folder.iterdir()):
                    raise UserError(f"feature cache {self.folder} exists and is not a feature cache (no {META}); "
                                    "give another --features-cache (nothing was changed)")
                return
            try:
                found = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise UserError(f"{meta} cannot be read ({err}); delete the folder {self.folder} (a cache: it is made "
                                "again) or give another --features-cache") from None
            if not isinstance(found, dict) or any(found.get(k) != v for k, v in self.meta.items()):
                raise UserError(f"{meta} describes other features than this model's ({found.get('backbone')!r}, "
                                f"{found.get('feature_dim')!r}-d); delete the folder {self.folder} (a cache: it is "
                                "made again) or give another --features-cache")

    def rows(self) -> dict[str, np.ndarray]:
        """Every cached row by its key (the first part that holds a key wins)."""
        if self._rows is not None:
            return self._rows
        self._rows = {}
        if not self.folder.is_dir():
            return self._rows
        for index in sorted(self.folder.glob("part-*.csv")):
            array_path = index.with_suffix(".npy")
            try:
                keys = pd.read_csv(index, dtype=str, keep_default_na=False)["key"].tolist()
                array = np.load(array_path, mmap_mode="r")
            except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue  # a part damaged by hand: its images are extracted again
            if array.ndim != 2 or array.shape != (len(keys), self.dim) or array.dtype != np.float16:
                continue
            for i, key in enumerate(keys):
                self._rows.setdefault(key, array[i])
        return self._rows

    def lookup(self, keys: list[str | None]) -> dict[int, np.ndarray]:
        """{position in ``keys``: its cached row} for the keys the cache holds."""
        rows = self.rows()
        return {i: np.asarray(rows[k]) for i, k in enumerate(keys) if k is not None and k in rows}

    def add(self, keys: list[str], ids: list[str], features: np.ndarray) -> Path | None:
        """Store the rows of a run as one new part; returns its .npy (None when there is nothing)."""
        if not keys:
            return None
        features = np.asarray(features, dtype=np.float16)
        assert features.shape == (len(keys), self.dim) and len(ids) == len(keys)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / META).exists():
            write_json(self.folder / META, self.meta)
        stem = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}"
        with atomic_path(self.folder / f"{stem}.npy") as tmp:
            with tmp.open("wb") as f:
                np.save(f, features)
        write_csv(self.folder / f"{stem}.csv", pd.DataFrame({"key": keys, "id": [readable(i) for i in ids]}))
        if self._rows is not None:
            for key, row in zip(keys, features):
                self._rows.setdefault(key, row)
        return self.folder / f"{stem}.npy"
