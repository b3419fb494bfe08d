"""Run ``python -m MODULE ARGS...`` in this process, then print its peak memory as JSON.

    python -m bench.peak_rss stages.extract --model alexnet ...
"""
from __future__ import annotations

import json
import resource
import runpy
import sys


def main() -> None:
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise
    to_mb = 1 / 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({
        "self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb, 1),
        "largest_child_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb, 1),
    }))


if __name__ == "__main__":
    main()
