"""How each stage's cost grows with the number of images: 10k, 100k (and 1M) tiny files.

For each size, builds a folder of tiny, distinct PNGs (20 classes) inside a temporary git +
DVC copy of the project, then measures wall time and peak memory of

- filter with a cold validation cache (every file read, hashed and decoded) and a warm one
  (unchanged files are recognised by path, size, mtime and inode);
- split;
- ``dvc status`` on the unchanged pipeline (filter and split just ran; DVC compares the
  image folder, a dependency, against its state database: one stat per file);
- head training on synthetic 4096-d float16 features (80 % train, 10 % val rows), per epoch;

and prints the growth factor per tenfold step. Images are tiny on purpose: this measures the
per-file and per-row costs that grow with the count; extraction (the backbone over real-size
images) grows linearly at the rate `make bench` measures and is not re-measured here.

    python -m bench.scale                              # 10k and 100k
    python -m bench.scale --sizes 10000 100000 1000000 # where disk (about 4 KB per file) and time allow
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import yaml

from plankton_transfer.settings import usable_cores

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 20
DIM = 4096
SIDE = 16


def tiny_png(index: int, label: int) -> bytes:
    """A 16x16 RGB PNG, class-coloured, with ``index`` written into its first pixels (distinct bytes)."""
    pixels = bytearray(bytes([40 + 10 * label, 200 - 5 * label, 120]) * (SIDE * SIDE))
    pixels[:8] = index.to_bytes(8, "little")
    rows = b"".join(b"\0" + bytes(pixels[r * SIDE * 3:(r + 1) * SIDE * 3]) for r in range(SIDE))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")


def build_images(raw: Path, n: int) -> float:
    """``raw/class_XX/img_XXXXXXX.png``, ``n`` files; returns seconds (reused when complete)."""
    marker = raw / f".complete-{n}"
    if marker.exists():
        return 0.0
    start = time.perf_counter()
    for i in range(n):
        folder = raw / f"class_{i % CLASSES:02d}"
        if i < CLASSES:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:07d}.png").write_bytes(tiny_png(i, i % CLASSES))
    marker.touch()
    return time.perf_counter() - start


def make_repo(repo: Path, raw: Path) -> None:
    """The project's pipeline (code, dvc.yaml, params) in a fresh git + DVC repo whose
    ``data.raw`` is the image folder ``raw`` (outside the repo: DVC hashes it as any
    dependency, and a fresh repo starts with a cold DVC state)."""
    for package in ("plankton_transfer", "stages"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "data" / "pretrained", repo / "data" / "pretrained", dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if not Path(folder, n).is_dir() and n != "README.md"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(models=["alexnet"], data={"raw": str(raw)})
    params["filter"].update(min_images_per_class=1, workers=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/.cache/\n*.partial\n__pycache__/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)


def children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs): less sensitive than wall
    time to other work on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[dict, str]:
    """Wall and CPU seconds of a command; returns them with its output."""
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(children_cpu() - cpu, 2)}, proc.stdout


def measured(cmd: list[str], cwd: Path) -> dict:
    """Wall and CPU time and peak memory of ``python -m bench.peak_rss <cmd>`` (a stage, as dvc runs it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    times, out = timed([sys.executable, "-m", "bench.peak_rss", *cmd], cwd, env)
    return {**times, "peak_mb": json.loads(out.strip().splitlines()[-1])["self_mb"]}


def synthetic_features(folder: Path, n: int, seed: int = 0) -> None:
    """A features folder as the extract stage writes it: 80/10/10 % rows of 4096-d float16."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": n * 8 // 10, "val": n // 10, "test": n - n * 8 // 10 - n // 10}
    for split, rows in sizes.items():
        x = np.lib.format.open_memmap(folder / f"{split}.npy", mode="w+", dtype=np.float16, shape=(rows, DIM))
        for start in range(0, rows, 65536):
            stop = min(rows, start + 65536)
            x[start:stop] = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        x.flush()
        del x
        np.save(folder / f"{split}_labels.npy", (np.arange(rows) % CLASSES).astype(np.int64))
    meta = {"backbone": "synthetic", "weights": {}, "preprocess": {}, "feature_dim": DIM, "seconds": 0,
            "classes": [f"class_{i:02d}" for i in range(CLASSES)], "sizes": sizes, "images_per_s": None,
            "environment": {}}
    (folder / "meta.json").write_text(json.dumps(meta))


def measure_size(n: int, base: Path, epochs: int) -> dict:
    raw = base / f"images-{n}"
    result = {"images": n, "build_seconds": round(build_images(raw, n), 1)}
    with tempfile.TemporaryDirectory(prefix=f"scale-{n}-") as tmp:
        repo, work = Path(tmp) / "repo", Path(tmp) / "work"
        repo.mkdir()
        work.mkdir()
        make_repo(repo, raw)
        measure_stages(result, raw, repo, work, epochs)
    return result


def measure_stages(result: dict, raw: Path, repo: Path, work: Path, epochs: int) -> None:
    params = ["--params", str(repo / "params.yaml")]
    filter_cmd = ["stages.filter", "--raw", str(raw), "--manifest", str(work / "manifest.csv"),
                  "--report", str(work / "report.json"), "--metrics", str(work / "filter.json"),
                  "--cache-file", str(work / "cache.csv"), *params]
    result["filter_cold"] = measured(filter_cmd, ROOT)
    for path in (work / "manifest.csv", work / "report.json", work / "filter.json"):
        path.unlink()
    result["filter_warm"] = measured(filter_cmd, ROOT)
    result["split"] = measured(["stages.split", "--manifest", str(work / "manifest.csv"), "--out-dir",
                                str(work / "split"), "--metrics", str(work / "split.json"), *params], ROOT)
    # the pipeline's own filter and split, through DVC (warm validation cache), then status unchanged
    (repo / ".cache").mkdir(exist_ok=True)
    shutil.copy(work / "cache.csv", repo / ".cache" / "filter-validation.csv")
    result["dvc_repro_filter_split"] = timed(["dvc", "repro", "split"], repo)[0]
    result["dvc_status_first"] = timed(["dvc", "status", "filter", "split"], repo)[0]
    result["dvc_status"], out = timed(["dvc", "status", "filter", "split"], repo)
    assert "up to date" in out, out
    synthetic_features(work / "features", result["images"])
    result["train"] = train_per_epoch(work, repo / "params.yaml", epochs)


def train_per_epoch(work: Path, params_file: Path, epochs: int) -> dict:
    """The train stage for ``epochs`` epochs; one epoch's cost (the study's protocol: a pass of
    SGD in batches of 24, then train and val evaluated) is its fit time over ``epochs``,
    without the process's start-up and loading. One intra-op thread: on a shared machine,
    thousands of small parallel ops each wait for a descheduled thread, which swamps the
    figure with the neighbours' load."""
    import torch  # imported late: this process starts the measured ones and stays small

    params = yaml.safe_load(params_file.read_text())
    params["train"].update(max_epochs=epochs, patience=epochs)
    (work / "train-params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ["OMP_NUM_THREADS"] = "1"  # for the stage measured next (this process's own torch is not used)
    run = measured(["stages.train", "--features", str(work / "features"), "--model-file", str(work / "model.pt"),
                    "--live-dir", str(work / "live"), "--params", str(work / "train-params.yaml")], ROOT)
    del os.environ["OMP_NUM_THREADS"]
    record = torch.load(work / "model.pt", weights_only=True)["training"]
    return {**run, "seconds": round(record["seconds"] / record["epochs"], 2), "stage_seconds": run["seconds"],
            "cpu_seconds": None, "stage_cpu_seconds": run["cpu_seconds"], "epochs": record["epochs"],
            "placement": record["features"]["placement"]}


ROWS = [("filter, cold cache", "filter_cold"), ("filter, warm cache", "filter_warm"), ("split", "split"),
        ("dvc repro filter + split (DVC hashes the folder)", "dvc_repro_filter_split"),
        ("dvc status, unchanged", "dvc_status"), ("train, one epoch (4096-d, one thread)", "train")]


def table(results: list[dict]) -> str:
    """Markdown: wall and CPU seconds and peak MB per size, and the growth of CPU time per tenfold step."""
    sizes = [r["images"] for r in results]
    head = "| stage | " + " | ".join(f"{n:,} images: wall / CPU, peak" for n in sizes) + " | CPU growth per 10x |"
    lines = [head, "|---" * (len(sizes) + 2) + "|"]
    for label, key in ROWS:
        cells = [f"{r[key]['seconds']:.1f} s" + (f" / {r[key]['cpu_seconds']:.1f} s" if r[key]["cpu_seconds"] else "")
                 + (f", {r[key]['peak_mb']:,.0f} MB" if "peak_mb" in r[key] else "") for r in results]
        cpu = [r[key]["cpu_seconds"] or r[key]["seconds"] for r in results]  # train: fit seconds, one thread
        growth = [f"{b / a:.1f}x" for a, b in zip(cpu, cpu[1:]) if a > 0]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(growth)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--epochs", type=int, default=2, help="training epochs that measure one epoch's cost")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "plankton-bench-scale",
                   help="image folders and repos are kept here between runs")
    p.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = p.parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        results.append(measure_size(n, args.cache_dir, args.epochs))
        print(json.dumps(results[-1]), flush=True)
    report = {"cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "load_average": os.getloadavg(),
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
