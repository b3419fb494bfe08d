"""Check that `dvc repro --force` reproduces the committed results (`make check-reproduction`,
run by .ci/run on a clean clone).

Every JSON and CSV file under ``metrics/`` that the commit holds is compared with the one the
run wrote, value by value (JSON flattened to keys, CSV cell by cell), except what describes the
run rather than the result: timings, environments, free memory and how features were placed.
Numbers must agree within ``--atol`` (default 0.002: metrics are stored rounded to 4 decimals,
and a different CPU may sum floats in another order); flags, counts and text must be equal. On
a mismatch the differences are printed as a table and the exit status is 1. ``metrics/headline.json``
(the DVC metrics file) is among them, so `dvc metrics diff` would show nothing either.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from plankton_transfer.cli.report import dvc, fmt

RUN_ONLY = ("seconds", "per_s", "environment", "free_bytes", "train_features", "images_per_s", "cpu_threads",
            "fingerprint")  # a hash of the head's exact bits: another CPU may round differently


def describes_the_run(key: str) -> bool:
    return any(part in key for part in RUN_ONLY)


def flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, list):
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


def committed_files(rev: str, folder: str = "metrics") -> list[str]:
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, folder], capture_output=True, text=True,
                            check=True).stdout.split()
    return [p for p in listed if p.endswith((".json", ".csv"))]


def committed_text(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout


def values(path: str, text: str) -> dict[str, object]:
    if path.endswith(".json"):
        return flatten(json.loads(text))
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    return {f"{i}.{column}": frame.at[i, column] for i in frame.index for column in frame.columns}


def same(old, new, atol: float) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if numbers:
        return (math.isnan(old) and math.isnan(new)) or abs(new - old) <= atol
    return old == new


def mismatches(rev: str, atol: float) -> tuple[list[tuple[str, str, object, object]], int]:
    bad, checked = [], 0
    for path in committed_files(rev):
        old = values(path, committed_text(rev, path))
        new = values(path, Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}
        for key in sorted(set(old) | set(new)):
            if describes_the_run(f"{path}:{key}"):
                continue
            checked += 1
            if not same(old.get(key), new.get(key), atol):
                bad.append((path, key, old.get(key), new.get(key)))
    return bad, checked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="HEAD", help="the commit whose results must be reproduced")
    p.add_argument("--atol", type=float, default=0.002)
    p.add_argument("--no-repro", action="store_true", help="compare the workspace as it is")
    args = p.parse_args(argv)
    if not args.no_repro:
        print("reproduction check: dvc repro --force ...", flush=True)
        dvc("repro", "--force")
    bad, checked = mismatches(args.rev, args.atol)
    if bad:
        print(f"reproduction check FAILED: {len(bad)} of {checked} values differ from {args.rev} (tolerance {args.atol}):")
        print("| file | key | committed | reproduced |\n|---|---|---:|---:|")
        for path, key, old, new in bad[:200]:
            print(f"| {path} | {key} | {fmt(old)} | {fmt(new)} |")
        return 1
    print(f"reproduction check passed: {checked} values in metrics/ equal to {args.rev} (tolerance {args.atol}; "
          "timings and environments excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
