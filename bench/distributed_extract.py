"""Benchmark: the extract stage as one process and under torchrun, on the same images and device.

Runs the real stage commands in a scratch folder (filter, split, then ``python -m stages.extract``
twice: plainly, and with ``PLANKTON_LAUNCHER=torchrun`` as slurm/one-node.sbatch sets it)
and compares the two feature folders: rows, labels, meta.json (timings aside) and the largest
absolute difference of the float16 features. Not part of the tests (tests/test_distributed.py
checks the same on CPU with 2 gloo processes); this is the GPU check of bench/gpu-check.sh.

    python -m bench.distributed_extract --classes 17 --per-class 1000 --model alexnet --nproc 0
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.standin import build_standin
from plankton_transfer.settings import usable_cores

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
TIMINGS = ("seconds", "images_per_s")


def stage(module: str, *args: str, env: dict[str, str] | None = None) -> float:
    """Run ``python -m stages.<module>`` from the project root; returns its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        **(env or {})})
    return time.perf_counter() - start


def write_params(path: Path, raw: Path, batch_size: int, decode: str) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["raw"] = str(raw)
    params["extract"].update(batch_size=batch_size, decode=decode)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def comparable(meta: dict) -> dict:
    """meta.json without what depends on how it ran (timings, threads, processes)."""
    meta = {k: v for k, v in meta.items() if k not in TIMINGS}
    meta["environment"] = {k: v for k, v in meta["environment"].items() if k not in ("cpu_threads", "processes")}
    return meta


def compare(single: Path, spread: Path) -> dict:
    diffs, labels_equal, rows = {}, True, 0
    for split in SPLITS:
        a, b = np.load(single / f"{split}.npy"), np.load(spread / f"{split}.npy")
        if a.shape != b.shape:
            raise SystemExit(f"{split}: {a.shape} rows one process, {b.shape} under torchrun")
        rows += len(a)
        diffs[split] = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) if len(a) else 0.0
        labels_equal &= np.array_equal(np.load(single / f"{split}_labels.npy"), np.load(spread / f"{split}_labels.npy"))
    metas = [json.loads((folder / "meta.json").read_text()) for folder in (single, spread)]
    return {"rows": rows, "max_abs_diff": diffs, "identical": all(d == 0.0 for d in diffs.values()),
            "labels_equal": bool(labels_equal), "meta_equal_without_timings": comparable(metas[0]) == comparable(metas[1]),
            "images_per_s": {"one_process": metas[0]["images_per_s"], "torchrun": metas[1]["images_per_s"]},
            "processes": metas[1]["environment"].get("processes"), "device": metas[1]["environment"].get("device_name")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--classes", type=int, default=17)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--data", type=Path, help="an existing class-folder dataset (default: build a stand-in)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "device"])
    p.add_argument("--nproc", type=int, default=0, help="torchrun processes (0: one per GPU)")
    p.add_argument("--out", type=Path, default=Path("bench/results/distributed.json"))
    args = p.parse_args(argv)

    data = args.data or build_standin(args.cache_dir / f"standin-{args.classes}x{args.per_class}", args.classes,
                                      args.per_class, workers=usable_cores())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        params = str(write_params(work / "params.yaml", data.resolve(), args.batch_size, args.decode))
        seconds = {"filter": stage("filter", "--raw", str(data), "--manifest", str(work / "manifest.csv"),
                                   "--report", str(work / "report.json"), "--metrics", str(work / "f.json"),
                                   "--cache-file", str(work / "cache.csv"), "--params", params)}
        seconds["split"] = stage("split", "--manifest", str(work / "manifest.csv"), "--out-dir", str(work / "split"),
                                 "--metrics", str(work / "s.json"), "--params", params)
        extract = ["--model", args.model, "--raw", str(data), "--split-dir", str(work / "split"), "--params", params]
        seconds["extract_one_process"] = stage("extract", *extract, "--out-dir", str(work / "single"))
        seconds["extract_torchrun"] = stage("extract", *extract, "--out-dir", str(work / "torchrun"), env={
            "PLANKTON_LAUNCHER": "torchrun", "PLANKTON_NPROC": str(args.nproc)})
        result = {"model": args.model, "batch_size": args.batch_size, "decode": args.decode, "nproc": args.nproc,
                  "stage_seconds": {k: round(v, 2) for k, v in seconds.items()},
                  **compare(work / "single", work / "torchrun")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
