"""Near-duplicate images: one organism imaged in consecutive frames, or one image resized or
re-encoded under another name. In different splits they inflate test scores (leakage).

The filter stage records each kept image's 64-bit perceptual hash (imagehash's DCT ``phash``);
two images are near-duplicates when their hashes differ in at most ``max_distance`` bits.
Pairs are found without comparing every pair: split into ``max_distance + 1`` pieces, two
hashes within that distance agree exactly on at least one piece (pigeonhole), so only images
sharing a piece are compared, in blocks whose memory stays bounded.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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


def cross_split_pairs(frame: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Near-duplicate pairs whose images are in different splits, with both paths, closest first.

    ``frame``: path, class, split and phash of every image (all splits)."""
    pairs = near_duplicate_pairs(frame["phash"], max_distance)
    i, j, distance = (pairs[:, k] for k in range(3))
    split = frame["split"].to_numpy()
    across = split[i] != split[j] if len(pairs) else np.zeros(0, bool)
    a, b = frame.iloc[i[across]].reset_index(drop=True), frame.iloc[j[across]].reset_index(drop=True)
    return pd.DataFrame({"distance": distance[across], "path_a": a["path"], "split_a": a["split"],
                         "class_a": a["class"], "path_b": b["path"], "split_b": b["split"], "class_b": b["class"]})


def leakage_counts(pairs: pd.DataFrame) -> dict[str, int]:
    """Cross-split near-duplicate pairs in total and per pair of splits (numbers for the metrics)."""
    names = ["_".join(sorted((a, b), key=["train", "val", "test"].index)) for a, b in zip(pairs["split_a"],
                                                                                            pairs["split_b"])]
    counts = {key: names.count(key) for key in ("train_val", "train_test", "val_test")}
    return {"near_duplicate_pairs": len(pairs), **counts}
