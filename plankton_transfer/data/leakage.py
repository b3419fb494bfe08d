"""Near-duplicate images: one organism imaged in consecutive frames, or one image resized or
re-encoded under another name. In different splits they inflate test scores (leakage).

Two signals, because one is not enough:
1. candidates: the filter stage records each kept image's 64-bit perceptual hash (imagehash's
   DCT ``phash``); two images whose hashes differ in at most ``split.near_duplicate_distance``
   bits are candidates. Found without comparing every pair: split into ``max_distance + 1``
   pieces, two hashes within that distance agree exactly on at least one piece (pigeonhole), so
   only images sharing a piece are compared, in blocks whose memory stays bounded;
2. confirmation (:func:`confirm`): a 64-bit hash of a small dark organism on a plain background
   carries little information, so different organisms of different classes often hash within
   a few bits (on one real set, 83 % of the pairs reported were of different classes). Each
   candidate pair is compared pixel by pixel: both images letterboxed to 32 x 32 (data/letterbox.py)
   and their Pearson correlation taken; a pair is confirmed at ``split.near_duplicate_similarity``
   (0.99) or more. Copies resized to 64 % or re-encoded at JPEG quality 40 measured 0.997 or more;
   of 253 hash candidates among 300 distinct synthetic blobs (dark ellipses on a plain background,
   tests/test_grouping.py's kind), none reached 0.99 (median 0.90, 99th percentile 0.984).

Confirmed pairs of one class in different splits are possible leakage; confirmed pairs of
different classes are possible label conflicts (one organism filed twice); unconfirmed
candidates are listed but not counted as either. Only confirmed same-class pairs are grouped by
``split.group: near_duplicates``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from plankton_transfer.data.letterbox import letterbox_image
from plankton_transfer.errors import UserError

HASH_BITS = 64
BLOCK_CELLS = 4_000_000  # hash comparisons held at once (32 MB), however large a bucket is


def hash_values(phashes: pd.Series | list[str]) -> np.ndarray:
    """Hex perceptual hashes as unsigned 64-bit integers."""
    try:
        return np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    except (TypeError, ValueError):
        raise UserError("the manifest's phash column holds a value that is not a perceptual hash; "
                        "re-run the filter stage (dvc repro)") from None


def pieces(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of ``max_distance + 1`` contiguous pieces covering the 64 bits."""
    n = max_distance + 1
    edges = [round(i * HASH_BITS / n) for i in range(n + 1)]
    return [(lo, hi - lo) for lo, hi in zip(edges[:-1], edges[1:])]


def pairs_within(members: np.ndarray, values: np.ndarray, max_distance: int) -> np.ndarray:
    """(i, j, distance) rows, i < j, for the near-duplicate pairs among ``members`` (row indices)."""
    found = []
    sub = values[members]
    rows_per_block = max(1, BLOCK_CELLS // len(members))
    for start in range(0, len(members), rows_per_block):
        block = sub[start:start + rows_per_block]
        distance = np.bitwise_count(block[:, None] ^ sub[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        keep = cols > rows + start
        found.append(np.stack([members[rows[keep] + start], members[cols[keep]], distance[rows[keep], cols[keep]]], 1))
    return np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)


def near_duplicate_pairs(phashes: pd.Series | list[str], max_distance: int) -> np.ndarray:
    """Every pair (i, j, distance), i < j, of hashes at most ``max_distance`` bits apart, sorted."""
    values = hash_values(phashes)
    found = [np.zeros((0, 3), dtype=np.int64)]
    for shift, width in pieces(max_distance):
        keys = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
        for members in np.split(order, starts[1:]):
            if len(members) > 1:
                found.append(pairs_within(np.sort(members), values, max_distance).astype(np.int64))
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0], pairs[:, 2]))] if len(pairs) else pairs


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Cluster number of each of ``n`` images: images linked by near-duplicate pairs share one."""
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


THUMBNAIL = 32  # side of the letterboxed thumbnails compared: small enough to average out JPEG noise


def thumbnail(img: Image.Image) -> np.ndarray:
    """The image letterboxed to THUMBNAIL x THUMBNAIL (its border colour as padding), as float32."""
    return np.asarray(letterbox_image(img, THUMBNAIL, Image.Resampling.BILINEAR), dtype=np.float32)


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails' pixels (1: the same picture up to brightness and contrast)."""
    x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm > 0 else float(np.array_equal(a, b))


def candidate_pairs(frame: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Every pair of images whose hashes are within ``max_distance`` bits, with both paths and
    classes, closest first. ``frame``: path, class and phash of every image."""
    pairs = near_duplicate_pairs(frame["phash"], max_distance)
    i, j, distance = (pairs[:, k] for k in range(3)) if len(pairs) else (np.zeros(0, int),) * 3
    a, b = frame.iloc[i].reset_index(drop=True), frame.iloc[j].reset_index(drop=True)
    return pd.DataFrame({"index_a": i, "index_b": j, "distance": distance, "path_a": a["path"].astype(str),
                         "class_a": a["class"].astype(str), "path_b": b["path"].astype(str),
                         "class_b": b["class"].astype(str)})


def confirm(pairs: pd.DataFrame, load, threshold: float) -> pd.DataFrame:
    """``pairs`` with ``similarity`` (pixels, :func:`pixel_similarity`), ``confirmed`` (at least
    ``threshold``) and ``same_class``; ``load(path)`` opens an image as RGB (each image once)."""
    thumbs: dict[str, np.ndarray] = {}

    def thumb(path: str) -> np.ndarray:
        if path not in thumbs:
            thumbs[path] = thumbnail(load(path))
        return thumbs[path]

    similarity = np.array([round(pixel_similarity(thumb(a), thumb(b)), 4)
                           for a, b in zip(pairs["path_a"], pairs["path_b"])], dtype=float)
    return pairs.assign(similarity=similarity, confirmed=similarity >= threshold,
                        same_class=(pairs["class_a"] == pairs["class_b"]).to_numpy())


def near_duplicates(frame: pd.DataFrame, max_distance: int, threshold: float, load) -> pd.DataFrame:
    """Hash candidates among ``frame``'s images (path, class, phash), each confirmed or not by its pixels."""
    return confirm(candidate_pairs(frame, max_distance), load, threshold)


def confirmed_same_class(pairs: pd.DataFrame) -> np.ndarray:
    """(index_a, index_b) rows of the confirmed pairs of one class: the near-duplicates to keep together."""
    keep = pairs[pairs["confirmed"] & pairs["same_class"]]
    return keep[["index_a", "index_b"]].to_numpy(dtype=np.int64).reshape(-1, 2)


def cross_split(pairs: pd.DataFrame, split_of: dict[str, str]) -> pd.DataFrame:
    """The pairs whose images ended in different splits (``split_of``: path -> split), for the report."""
    located = pairs.assign(split_a=pairs["path_a"].map(split_of), split_b=pairs["path_b"].map(split_of))
    across = located[located["split_a"] != located["split_b"]]
    columns = ["path_a", "split_a", "class_a", "path_b", "split_b", "class_b", "distance", "similarity",
               "confirmed", "same_class"]
    return across[columns].reset_index(drop=True)


def leakage_counts(across: pd.DataFrame) -> dict[str, int]:
    """Cross-split pairs: confirmed of one class (possible leakage, also per pair of splits),
    confirmed of two classes (possible label conflicts), and hash candidates not confirmed."""
    leak = across[across["confirmed"] & across["same_class"]]
    names = ["_".join(sorted((a, b), key=["train", "val", "test"].index)) for a, b in zip(leak["split_a"],
                                                                                            leak["split_b"])]
    counts = {key: names.count(key) for key in ("train_val", "train_test", "val_test")}
    return {"near_duplicate_pairs": len(leak), **counts,
            "label_conflict_pairs": int((across["confirmed"] & ~across["same_class"]).sum()),
            "unconfirmed_candidates": int((~across["confirmed"]).sum())}
