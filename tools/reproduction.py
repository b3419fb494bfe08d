"""Check that `dvc repro --force` reproduces the committed metrics (`make check-reproduction`,
run by .ci/run on a clean clone).

Every metric that `dvc metrics diff` sees is compared with the committed one, except
timings (keys with "seconds" or "per_s"). Numbers must agree within ``--atol`` (default
0.002: metrics are stored rounded to 4 decimals, and a different CPU may sum floats in
another order); flags, counts and strings must be equal. On a mismatch the differences are
printed as a table and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import sys

from plankton_transfer.cli.report import dvc, fmt, is_timing


def mismatches(diff: dict, atol: float) -> list[tuple[str, str, object, object]]:
    bad = []
    for path, entries in diff.items():
        for key, change in entries.items():
            if is_timing(key):
                continue
            old, new = change.get("old"), change.get("new")
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
            if (numbers and abs(new - old) > atol) or (not numbers and old != new):
                bad.append((path, key, old, new))
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="HEAD", help="the commit whose metrics must be reproduced")
    p.add_argument("--atol", type=float, default=0.002)
    p.add_argument("--no-repro", action="store_true", help="compare the workspace as it is")
    args = p.parse_args(argv)
    if not args.no_repro:
        print("reproduction check: dvc repro --force ...", flush=True)
        dvc("repro", "--force")
    diff = json.loads(dvc("metrics", "diff", args.rev, "--all", "--json") or "{}")
    checked = sum(1 for entries in diff.values() for key in entries if not is_timing(key))
    bad = mismatches(diff, args.atol)
    if bad:
        print(f"reproduction check FAILED: {len(bad)} of {checked} metrics differ from {args.rev} "
              f"(tolerance {args.atol}):")
        print("| file | key | committed | reproduced |\n|---|---|---:|---:|")
        for path, key, old, new in bad:
            print(f"| {path} | {key} | {fmt(old)} | {fmt(new)} |")
        return 1
    print(f"reproduction check passed: {checked} metrics equal to {args.rev} (tolerance {args.atol}; timings excluded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
