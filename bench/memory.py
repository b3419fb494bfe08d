"""Peak memory of the real stage processes on a large stand-in dataset, over several runs.

Runs filter, split, extract and train as `dvc repro` would (one process per stage, the
project's CLI), each under bench/peak_rss.py, ``--runs`` times each, and reports every run's
peak resident memory (the stage's own process, and its largest DataLoader worker), the
resident size at each quarter of the run (so growth inside a run shows), and the maximum
over the runs: one lucky run says little when the allocator's behaviour varies from run to
run.

    python -m bench.memory --classes 20 --per-class 1000 --model alexnet --runs 5
    python -m bench.memory --stages extract --runs 3 --env MALLOC_ARENA_MAX=2   # try a setting
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.standin import build_standin
from plankton_transfer.settings import usable_cores

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("filter", "split", "extract", "train")


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


def outputs(work: Path) -> dict[str, list[Path]]:
    """What each stage writes in ``work`` (removed before its next run: the stages refuse to
    replace a folder, as under dvc repro, which clears outputs first)."""
    return {"filter": [work / "manifest.csv", work / "report.json", work / "filter.json"],
            "split": [work / "split", work / "split.json"], "extract": [work / "features"],
            "train": [work / "model.pt", work / "live"]}


def clear(paths: list[Path]) -> None:
    for path in paths:  # all written by this benchmark, in its own temporary folder
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.peak_rss", *cmd], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:1])} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - start, 1)}


def summarise(runs: list[dict]) -> dict:
    peaks = [r["self_mb"] for r in runs]
    return {"max_self_mb": max(peaks), "min_self_mb": min(peaks), "runs": runs}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5, help="runs of each stage; the maximum peak is reported")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="stages to measure (their inputs are made once by the earlier stages)")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="extra environment of the stages")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench")
    p.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    raw = build_standin(args.cache_dir / f"standin-{args.classes}x{args.per_class}", args.classes, args.per_class)
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    results = {"model": args.model, "images": args.classes * args.per_class, "runs": args.runs,
               "env": args.env, "cpu_count": os.cpu_count(), "usable_cores": usable_cores(),
               "load_before": os.getloadavg()[0], "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["filter"]["min_images_per_class"] = 1
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        commands, last = stage_commands(raw, work, args.model), max(STAGES.index(s) for s in args.stages)
        for stage in STAGES[:last + 1]:
            measured = stage in args.stages
            runs = []
            for i in range(args.runs if measured else 1):
                clear(outputs(work)[stage])
                runs.append(measure(commands[stage], env))
                if stage == "extract":
                    runs[-1]["images_per_s"] = json.loads((work / "features" / "meta.json").read_text())["images_per_s"]
                if measured:
                    r = runs[-1]
                    print(f"{stage:8s} run {i + 1}: peak RSS {r['self_mb']:8.1f} MB, RSS by quarter "
                          f"{r['rss_quarters_mb']}, anonymous at end {r['anon_at_end_mb']:.0f} MB, {r['seconds']} s"
                          + (f", {r['images_per_s']} images/s" if "images_per_s" in r else ""), flush=True)
            if measured:
                results["stages"][stage] = summarise(runs)
                print(f"{stage:8s} maximum peak over {len(runs)} runs: {results['stages'][stage]['max_self_mb']:.1f} MB",
                      flush=True)
    results["load_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
