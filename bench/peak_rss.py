"""Run ``python -m MODULE ARGS...`` in this process, then print its peak memory as JSON.

    python -m bench.peak_rss stages.extract --model alexnet ...

The peak is the kernel's high-water mark of this program (``VmHWM``: unlike ``ru_maxrss``, it
starts afresh at exec, so a large parent process does not leak into it). A thread samples the resident size
every half second, so the output shows *when* memory grew: the resident size at each
quarter of the run, and the anonymous memory still held at the end (from
``/proc/self/status``: ``RssAnon``, what the allocator kept, as opposed to mapped files).
"""
from __future__ import annotations

import json
import resource
import runpy
import sys
import threading
import time
from pathlib import Path


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``RssAnon``...) in MB; 0 where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Resident size every ``interval`` seconds, until stopped."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.done = interval, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.samples.append(status_mb("VmRSS"))

    def quarters(self) -> list[float]:
        """Resident MB at 25, 50, 75 and 100 % of the run's duration."""
        if not self.samples:
            return []
        n = len(self.samples)
        return [round(self.samples[min(n - 1, max(0, n * q // 4 - 1))], 1) for q in (1, 2, 3, 4)]


def main() -> None:
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    sampler = Sampler()
    sampler.start()
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise
    anon_end = status_mb("RssAnon")
    sampler.done.set()
    to_mb = 1 / 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({
        "self_mb": round(status_mb("VmHWM"), 1),
        "largest_child_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb, 1),
        "anon_at_end_mb": round(anon_end, 1),
        "rss_quarters_mb": sampler.quarters(),
    }))


if __name__ == "__main__":
    main()
