"""The split stage's files: the filter stage's manifest and the three split CSVs, read the same
way everywhere (text columns stay text: '007' stays '007'), and the split's fingerprint."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from plankton_transfer.errors import UserError

SPLITS = ("train", "val", "test")
TEXT_COLUMNS = {"path": str, "class": str, "split": str, "sha256": str, "phash": str, "group": str, "sample": str}


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} not found; run the filter stage first (dvc repro)")
    return pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False)


def read_splits(split_dir: Path) -> dict[str, pd.DataFrame]:
    """The split stage's three CSVs."""
    parts = {}
    for s in SPLITS:
        path = split_dir / f"{s}.csv"
        if not path.is_file():
            raise UserError(f"{path} not found; run the split stage first (dvc repro)")
        parts[s] = pd.read_csv(path, dtype=TEXT_COLUMNS, keep_default_na=False)
    return parts


def split_fingerprint(parts: dict[str, pd.DataFrame]) -> str:
    """sha256 of every image's split, path and content hash: the same split gives the same value
    (a model file records it, so a card or an export can tell whose split it describes)."""
    digest = hashlib.sha256()
    for name in SPLITS:
        frame = parts[name]
        contents = frame["sha256"] if "sha256" in frame else [""] * len(frame)
        for path, content in zip(frame["path"], contents):
            digest.update(f"{name}\t{path}\t{content}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def class_counts(parts: dict[str, pd.DataFrame]) -> dict[str, dict[str, int]]:
    """split -> class -> images."""
    return {name: {str(k): int(v) for k, v in parts[name]["class"].value_counts().sort_index().items()}
            for name in SPLITS}

