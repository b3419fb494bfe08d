"""Validating many image files in parallel, with a cache of verdicts.

A verdict (content hash, usable or rejected with a reason, conversions, size) depends only
on the file's bytes and the ``image`` params. It is cached by (path, size, mtime, inode) plus
a fingerprint of those params and of this code's rules, the same signals DVC trusts for its
own hash cache, so an unchanged million-file folder is not re-read on the next run.
The cache only saves time: a cache that cannot be written (disk full, read-only folder) is
reported as a warning and never costs the verdicts just computed.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from plankton_transfer.errors import UserError
from plankton_transfer.files import atomic_path
from plankton_transfer.settings import usable_cores
from plankton_transfer.data.images import ImageCheck, check_image
from plankton_transfer.params.image import ImageParams

RULES_VERSION = "4"  # bump when data/images.py changes a verdict, to invalidate caches (4: perceptual hash)
CACHE_COLUMNS = ["path", "size", "mtime_ns", "inode", "fingerprint", "sha256", "ok", "reason", "kind",
                 "conversions", "width", "height", "format", "phash"]


def validate_files(
    raw: Path, paths: list[str], cfg: ImageParams, cache_file: Path | None, workers: int = -1
) -> dict[str, ImageCheck]:
    """Return an :class:`ImageCheck` for every path (relative to ``raw``)."""
    fingerprint = f"{RULES_VERSION}|{cfg.max_pixels}|{cfg.min_side}|{cfg.background}"
    stats = {p: file_signature(raw / p) for p in paths}
    cached = read_cache(cache_file, fingerprint)
    checks = {p: cached[(p, *stats[p])] for p in paths if (p, *stats[p]) in cached}
    todo = [p for p in paths if p not in checks]
    checks.update(zip(todo, run_checks([raw / p for p in todo], cfg, workers)))
    if cache_file is not None:
        write_cache(cache_file, fingerprint, {p: (stats[p], checks[p]) for p in paths})
    return checks


def file_signature(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:  # vanished since the scan: never matches the cache, and check_image reports it
        return -1, -1, -1
    return st.st_size, st.st_mtime_ns, st.st_ino


def run_checks(paths: list[Path], cfg: ImageParams, workers: int) -> list[ImageCheck]:
    workers = usable_cores() if workers < 0 else workers  # -1: one process per usable core; 0: none
    check = functools.partial(check_image, cfg=cfg)
    progress = dict(total=len(paths), desc="validate", unit="img", mininterval=1.0, disable=not paths)
    if workers <= 1 or len(paths) < 64:
        return [check(p) for p in tqdm(paths, **progress)]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(check, paths, chunksize=32), **progress))


def read_cache(cache_file: Path | None, fingerprint: str) -> dict[tuple, ImageCheck]:
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        frame = pd.read_csv(cache_file, dtype={"reason": str, "kind": str, "conversions": str, "format": str,
                                               "phash": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return {}  # a damaged cache only costs time: every file is checked again
    if list(frame.columns) != CACHE_COLUMNS:
        return {}
    frame = frame[frame["fingerprint"] == fingerprint]
    out = {}
    for row in frame.itertuples(index=False):
        conversions = tuple(row.conversions.split(" | ")) if row.conversions else ()
        out[(row.path, row.size, row.mtime_ns, row.inode)] = ImageCheck(
            sha256=row.sha256, ok=bool(row.ok), reason=row.reason, kind=row.kind,
            conversions=conversions, width=int(row.width), height=int(row.height), format=row.format,
            phash=row.phash,
        )
    return out


def write_cache(cache_file: Path, fingerprint: str, entries: dict[str, tuple[tuple, ImageCheck]]) -> None:
    rows = [
        (p, *sig, fingerprint, c.sha256, c.ok, c.reason, c.kind, " | ".join(c.conversions), c.width, c.height,
         c.format, c.phash)
        for p, (sig, c) in entries.items()
    ]
    try:
        with atomic_path(cache_file) as tmp:
            pd.DataFrame(rows, columns=CACHE_COLUMNS).to_csv(tmp, index=False)
    except (OSError, UnicodeError, UserError) as err:  # disk full, read-only, a folder in the way
        why = getattr(err, "strerror", None) or str(err)
        print(f"warning: validation cache {cache_file} not written ({why}); the next run checks every file again",
              file=sys.stderr)

