"""Benchmark: head-training speed, the project's trainer against a plain PyTorch loop.

Synthetic float16 features (non-negative, class-dependent, as a CNN's pooled features) with
labels and a validation split (train : val = 8 : 1, the split stage's 0.8 / 0.1), kept
resident as float32 as the train stage keeps them (models/training.py ``resident_rows``):

- project: ``fit_heads`` (models/heads.py) as the train stage runs it, ``history=True`` (the
  train and validation sets scored after every epoch, for the curves);
- plain: ``nn.Linear`` + ``torch.optim.SGD`` (momentum 0.9) + ``nn.CrossEntropyLoss`` on
  shuffled batches of 24, then the train and validation sets scored every epoch, with torch's
  default threads: the study's protocol written the usual way.

Early stopping is off (patience above the epochs) so every epoch runs. Each figure is epochs
per second and seconds per 100 epochs, over ``--repeats`` runs (the range is shown); a cell
whose 100 epochs would take long is timed over fewer epochs and extrapolated (said in the
table). ``--busy N`` starts N busy processes (``while True: pass``) for the whole run, so
cores shared with other work show (one per core shows oversubscription).

    python -m bench.head_speed --quick                        # a small grid
    python -m bench.head_speed --out bench/reference/head-speed          # full grid, .md + .csv
    python -m bench.head_speed --acceptance --repeats 3       # 3,480 x 4096, 120 classes, 100 epochs
    python -m bench.head_speed --acceptance --busy 2          # the same with one busy process per core
    python -m bench.head_speed --crossval                     # 5 folds x 2 repeats against one train
    python -m bench.head_speed --acceptance --trainer-at 5c6b7ab  # the trainer of an earlier commit
    python -m bench.head_speed --render bench/reference/head-speed/grid.csv   # a table again, from its CSV
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from plankton_transfer.models import crossval as crossval_module
from plankton_transfer.models.crossval import fit_folds
from plankton_transfer.models.folds import make_folds
from plankton_transfer.models.heads import RowGroup, fit_heads
from plankton_transfer.models.training import resident_rows
from plankton_transfer.params.crossval import CrossvalParams
from plankton_transfer.params.train import TrainParams
from plankton_transfer.runtime import environment, use_deterministic_algorithms
from plankton_transfer.settings import usable_cores

ROOT = Path(__file__).resolve().parents[1]
GRID = {"images": (1_000, 10_000, 100_000), "dims": (1280, 4096), "classes": (17, 120)}
QUICK = {"images": (1_000, 3_480), "dims": (1280, 4096), "classes": (120,)}
ACCEPTANCE = {"train": 3_480, "val": 435, "test": 435, "dim": 4096, "classes": 120}
BUDGET_S = 8.0  # a cell is timed over about this long (at most 100 epochs, at least 2), then extrapolated
STUDY = TrainParams(lr=0.001, momentum=0.9, batch_size=24)


@dataclasses.dataclass
class Data:
    x: torch.Tensor  # float32, resident
    y: torch.Tensor
    group: RowGroup
    classes: int


def synthetic(n_train: int, n_val: int, dim: int, classes: int, seed: int = 0, n_test: int = 0) -> Data:
    """float16 features of ``n_train + n_val (+ n_test)`` images, made float32 as the train stage
    loads them; generated in pieces, so memory holds the float32 matrix and little else. 30 %
    of the labels are redrawn at random, so the head overfits and early stopping fires about as
    on real features (3,480 x 4096 x 120: best validation loss near epoch 40, stopped near 60)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, dim, generator=g) * (torch.rand(classes, dim, generator=g) < 0.1)
    n = n_train + n_val + n_test
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    parts = []
    for lo in range(0, n, 8192):
        part = y[lo:lo + 8192]
        parts.append((1.5 * centres[part] + torch.randn(len(part), dim, generator=g)).relu().half().numpy())
    x = resident_rows(parts, torch.device("cpu"))
    y = torch.where(torch.rand(n, generator=g) < 0.3, torch.randint(0, classes, (n,), generator=g), y)
    return Data(x, y, RowGroup(np.arange(n_train), np.arange(n_train, n_train + n_val)), classes)


def run_project(data: Data, epochs: int, cfg: TrainParams = STUDY) -> float:
    """Seconds of ``fit_heads`` as the train stage runs it (history on, a progress callback)."""
    cfg = dataclasses.replace(cfg, max_epochs=epochs, patience=epochs + 1)
    start = time.perf_counter()
    result = fit_heads(data.x, data.y, [data.group], data.classes, cfg, seed=0, history=True,
                       progress=lambda epoch, row: None)
    seconds = time.perf_counter() - start
    assert len(result.history) == epochs
    return seconds


@torch.no_grad()
def score(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    loss, correct = 0.0, 0
    for lo in range(0, len(y), chunk):
        out = head(x[lo:lo + chunk])
        loss += nn.functional.cross_entropy(out, y[lo:lo + chunk], reduction="sum").item()
        correct += int((out.argmax(1) == y[lo:lo + chunk]).sum())
    return loss / len(y), correct / len(y)


def run_plain(data: Data, epochs: int, cfg: TrainParams = STUDY) -> float:
    """Seconds of the study's protocol as a plain PyTorch loop (torch's default threads)."""
    n_train, n_val = len(data.group.train), len(data.group.val)  # the first rows, then the next (views)
    x_train, y_train = data.x[:n_train], data.y[:n_train]
    x_val, y_val = data.x[n_train:n_train + n_val], data.y[n_train:n_train + n_val]
    torch.manual_seed(0)
    head = nn.Linear(data.x.shape[1], data.classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lrs[0], momentum=cfg.momentum)
    loss_fn = nn.CrossEntropyLoss()
    order_generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=order_generator)
        for lo in range(0, len(order), cfg.batch_size):
            idx = order[lo:lo + cfg.batch_size]
            loss = loss_fn(head(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score(head, x_train, y_train)
        score(head, x_val, y_val)
    return time.perf_counter() - start


def use_trainer_at(commit: str) -> str:
    """Measure models/heads.py as it was at ``commit`` (read with ``git show``) with this same
    harness: its ``fit_heads`` replaces the current one here and in cross-validation."""
    source = subprocess.run(["git", "show", f"{commit}:plankton_transfer/models/heads.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    name = f"heads_at_{commit}"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:plankton_transfer/models/heads.py", "exec"), module.__dict__)
    global fit_heads
    fit_heads = crossval_module.fit_heads = module.fit_heads
    return f"trainer at {commit}: "


def epochs_for(seconds_per_epoch: float, cap: int = 100) -> int:
    return int(min(cap, max(2, math.ceil(BUDGET_S / max(seconds_per_epoch, 1e-6)))))


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[int]]:
    """``n`` processes spinning on a core each, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def load() -> float:
    return round(os.getloadavg()[0], 2)


LABEL = ""  # "trainer at COMMIT: " with --trainer-at


def measure(name: str, fn, data: Data, epochs: int, repeats: int) -> dict:
    name = LABEL + name
    seconds, cpu, loads = [], [], []
    for _ in range(repeats):
        before, cpu_before = load(), time.process_time()
        seconds.append(fn(data, epochs))
        cpu.append(time.process_time() - cpu_before)
        loads.append(max(before, load()))
    per100 = [s / epochs * 100 for s in seconds]
    return {"trainer": name, "epochs_timed": epochs, "seconds": [round(s, 3) for s in seconds],
            "cpu_s_per_100": [round(c / epochs * 100, 2) for c in cpu],
            "s_per_100_min": round(min(per100), 2), "s_per_100_max": round(max(per100), 2),
            "epochs_per_s_max": round(epochs / min(seconds), 2), "epochs_per_s_min": round(epochs / max(seconds), 2),
            "load_1min_max": max(loads)}


def grid(sizes: dict, repeats: int, busy: int, plain: bool) -> list[dict]:
    rows = []
    for n in sizes["images"]:
        for dim in sizes["dims"]:
            for classes in sizes["classes"]:
                data = synthetic(n, n // 8, dim, classes)
                cell = {"busy": busy, "images": n, "val": n // 8, "dim": dim, "classes": classes}
                for name, fn in (("project", run_project), ("plain", run_plain))[:2 if plain else 1]:
                    warm = fn(data, 1)  # warm-up, and the time of one epoch (with the setup)
                    epochs = epochs_for(warm)
                    rows.append({**cell, **measure(name, fn, data, epochs, repeats)})
                    print(format_row(rows[-1]), flush=True)
                del data
    return rows


def acceptance(repeats: int, busy: int) -> list[dict]:
    a = ACCEPTANCE
    data = synthetic(a["train"], a["val"], a["dim"], a["classes"])
    use_deterministic_algorithms()  # as the train stage
    run_project(data, 1)
    row = {"busy": busy, "images": a["train"], "val": a["val"], "dim": a["dim"], "classes": a["classes"],
           **measure("project (acceptance)", run_project, data, 100, repeats)}
    print(format_row(row), flush=True)
    return [row]


def crossval_ratio(repeats: int, busy: int, epochs: int, patience: int | None) -> list[dict]:
    """fit_folds over 5 folds x 2 repeats of all images (train + val + test, as the crossval
    stage) against one train (fit_heads on the train split, history on, as the train stage),
    same features and protocol; ``patience`` None: early stopping off, every epoch runs."""
    a = ACCEPTANCE
    data = synthetic(a["train"], a["val"], a["dim"], a["classes"], n_test=a["test"])
    folds = make_folds(data.y.numpy(), None, CrossvalParams(folds=5, repeats=2), seed=0)

    def protocol(e: int) -> TrainParams:
        return dataclasses.replace(STUDY, max_epochs=e, patience=patience or e + 1)

    def crossval(d: Data, e: int) -> float:
        start = time.perf_counter()
        fitted = fit_folds(d.x, d.y, folds, d.classes, protocol(e), seed=0)
        crossval.epochs = fitted.epochs_run
        return time.perf_counter() - start

    def train(d: Data, e: int) -> float:
        start = time.perf_counter()
        fitted = fit_heads(d.x, d.y, [d.group], d.classes, protocol(e), seed=0, history=True,
                           progress=lambda epoch, row: None)
        train.epochs = fitted.epochs_run
        return time.perf_counter() - start

    crossval(data, 1)
    cell = {"busy": busy, "dim": a["dim"], "classes": a["classes"]}
    train_row = {**cell, "images": a["train"], "val": a["val"], **measure("one train", train, data, epochs, repeats)}
    cv_row = {**cell, "images": int(np.mean([len(f.train) for f in folds])), "val": int(np.mean([len(f.val) for f in folds])),
              **measure("crossval 5x2 (fit_folds)", crossval, data, epochs, repeats)}
    if patience:
        train_row["epochs_run"], cv_row["epochs_run"] = train.epochs, crossval.epochs
    low = cv_row["s_per_100_min"] / train_row["s_per_100_max"]
    high = cv_row["s_per_100_max"] / train_row["s_per_100_min"]
    mid = (sum(cv_row["seconds"]) / len(cv_row["seconds"])) / (sum(train_row["seconds"]) / len(train_row["seconds"]))
    cpu = np.mean(cv_row["cpu_s_per_100"]) / np.mean(train_row["cpu_s_per_100"])
    cv_row["ratio_to_train"] = f"{mid:.2f} (range {low:.2f}-{high:.2f}; CPU time {cpu:.2f})"
    for row in (train_row, cv_row):
        print(format_row(row), flush=True)
    return [train_row, cv_row]


def format_row(r: dict) -> str:
    extrapolated = "" if r["epochs_timed"] >= 100 else f" (from {r['epochs_timed']} epochs)"
    ratio = f", {r['ratio_to_train']} x one train" if "ratio_to_train" in r else ""
    stopped = f", early stopping at epochs {min(r['epochs_run'])}-{max(r['epochs_run'])}" if "epochs_run" in r else ""
    return (f"busy={r['busy']} {r['images']:>7} x {r['dim']:>4} x {r['classes']:>3} {r['trainer']:<26} "
            f"{r['epochs_per_s_min']}-{r['epochs_per_s_max']} epochs/s, "
            f"{r['s_per_100_min']}-{r['s_per_100_max']} s/100 epochs{extrapolated}{stopped}{ratio}, "
            f"runs {r['seconds']} s, CPU {r['cpu_s_per_100']} s/100 epochs (load {r['load_1min_max']})")


def span(lo: float, hi: float) -> str:
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def markdown(rows: list[dict]) -> str:
    lines = ["| busy processes | train images (+ val) | features | classes | trainer | epochs/s | s per 100 epochs "
             "| CPU s per 100 epochs | epochs timed | load (1 min) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "epochs_run" in r:
            timed = (f"up to {r['epochs_timed']}, early stopping at {span(min(r['epochs_run']), max(r['epochs_run']))}; "
                     f"runs {', '.join(f'{v:.1f}' for v in r['seconds'])} s")
        else:
            timed = str(r["epochs_timed"]) + ("" if r["epochs_timed"] >= 100 else ", extrapolated")
        trainer = r["trainer"] + (f": **{r['ratio_to_train']} x one train**" if "ratio_to_train" in r else "")
        cpu = span(min(r["cpu_s_per_100"]), max(r["cpu_s_per_100"]))
        rates = f"{span(r['epochs_per_s_min'], r['epochs_per_s_max'])} | {span(r['s_per_100_min'], r['s_per_100_max'])}"
        if "epochs_run" in r:  # early stopping: the runs' own seconds say it, not a rate per epoch of the cap
            rates = "- | -"
            cpu = "CPU " + ", ".join(f"{c * r['epochs_timed'] / 100:.1f}" for c in r["cpu_s_per_100"]) + " s in all"
        lines.append(f"| {r['busy']} | {r['images']:,} (+{r['val']:,}) | {r['dim']} | {r['classes']} | {trainer} "
                     f"| {rates} | {cpu} | {timed} | {r['load_1min_max']} |")
    return "\n".join(lines) + "\n"


LISTS = ("seconds", "cpu_s_per_100", "epochs_run")
TEXT = ("trainer", "ratio_to_train")


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV this benchmark wrote (to render its table again: ``--render``)."""
    def number(v: str) -> float | int:
        return float(v) if any(c in v for c in ".e") else int(v)

    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k, v in raw.items():
                if v == "":
                    continue
                row[k] = v if k in TEXT else [number(x) for x in v.split()] if k in LISTS else number(v)
            rows.append(row)
    return rows


def write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
                         for r in rows)
    env = environment(torch.device("cpu"))
    header = (f"{env['device_name']}, {usable_cores()} usable cores, torch {env['torch']}; "
              f"`python -m bench.head_speed {' '.join(sys.argv[1:])}`\n\n")
    out.with_suffix(".md").write_text(header + markdown(rows))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small grid (1,000 and 3,480 images, 120 classes)")
    p.add_argument("--acceptance", action="store_true", help="only 3,480 x 4096 x 120, 100 epochs, the project")
    p.add_argument("--crossval", action="store_true", help="only crossval (5 folds x 2 repeats) against one train")
    p.add_argument("--crossval-epochs", type=int, default=10, help="epochs of the crossval comparison (its cap "
                   "with --patience)")
    p.add_argument("--patience", type=int, help="crossval comparison with early stopping (default: off)")
    p.add_argument("--no-plain", action="store_true", help="the grid without the plain PyTorch loop")
    p.add_argument("--busy", type=int, default=0, help="busy processes running meanwhile (one per core: oversubscribed)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="write OUT.md (table) and OUT.csv")
    p.add_argument("--trainer-at", metavar="COMMIT", help="measure models/heads.py of an earlier commit instead")
    p.add_argument("--render", type=Path, nargs="+", help="print the table of CSVs written before, measure nothing")
    args = p.parse_args(argv)
    if args.render:
        rows = [row for path in args.render for row in read_rows(path)]
        print(markdown(rows))
        return rows
    if args.trainer_at:
        global LABEL
        LABEL = use_trainer_at(args.trainer_at)
    print(f"{usable_cores()} usable cores, torch {torch.__version__}, default threads {torch.get_num_threads()}, "
          f"{args.busy} busy processes", flush=True)
    with busy_processes(args.busy):
        if args.acceptance:
            rows = acceptance(args.repeats, args.busy)
        elif args.crossval:
            rows = crossval_ratio(args.repeats, args.busy, args.crossval_epochs, args.patience)
        else:
            rows = grid(QUICK if args.quick else GRID, args.repeats, args.busy, not args.no_plain)
    print("\n" + markdown(rows))
    if args.out:
        write(rows, args.out)
    return rows


if __name__ == "__main__":
    main()
