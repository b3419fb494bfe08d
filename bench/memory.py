"""Peak memory of the real stage processes on a large stand-in dataset.

Runs filter, split, extract and train as `dvc repro` would (one process per stage, the
project's CLI), each under bench/peak_rss.py, and reports each one's peak resident memory
(the stage's own process, and its largest DataLoader worker).

    python -m bench.memory --classes 20 --per-class 1000 --model alexnet
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.standin import build_standin

ROOT = Path(__file__).resolve().parents[1]


def stage_commands(raw: Path, work: Path, model: str) -> dict[str, list[str]]:
    params = ["--params", str(work / "params.yaml")]
    return {
        "filter": ["stages.filter", "--raw", str(raw), "--manifest", str(work / "manifest.csv"), "--report",
                   str(work / "report.json"), "--metrics", str(work / "filter.json"), "--cache-file",
                   str(work / "cache.csv"), *params],
        "split": ["stages.split", "--manifest", str(work / "manifest.csv"), "--out-dir", str(work / "split"),
                  "--metrics", str(work / "split.json"), *params],
        "extract": ["stages.extract", "--model", model, "--raw", str(raw), "--split-dir", str(work / "split"),
                    "--out-dir", str(work / "features"), *params],
        "train": ["stages.train", "--features", str(work / "features"), "--model-file", str(work / "model.pt"),
                  "--live-dir", str(work / "live"), *params],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench")
    p.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    args = p.parse_args(argv)
    raw = build_standin(args.cache_dir / f"standin-{args.classes}x{args.per_class}", args.classes, args.per_class)
    results = {"model": args.model, "images": args.classes * args.per_class, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["filter"]["min_images_per_class"] = 1
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        for stage, cmd in stage_commands(raw, work, args.model).items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "bench.peak_rss", *cmd], cwd=ROOT, capture_output=True,
                                  text=True, check=True)
            peak = json.loads(proc.stdout.strip().splitlines()[-1])
            results["stages"][stage] = {**peak, "seconds": round(time.perf_counter() - start, 1)}
            print(f"{stage:8s} peak RSS {peak['self_mb']:8.1f} MB (largest worker {peak['largest_child_mb']:.1f} MB), "
                  f"{results['stages'][stage]['seconds']} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
