"""How many labels does active learning save? A simulated labelling loop with an oracle.

On a labelled set whose features are already extracted, each strategy of
plankton_transfer/active (and random, the baseline) starts from the same ``k`` labelled images
per class of the train split (the pool), then round after round:

1. retrains the linear head on the labelled images only (the study's protocol through
   :func:`train_head`; early stopping on the whole val split);
2. scores it on the fixed test split (macro-F1, balanced accuracy, accuracy);
3. computes the head's temperature-calibrated probabilities of the unlabelled pool (the
   temperature fitted on val, as the train stage does) and lets the strategy pick ``N`` more,
   whose labels the oracle (the split's labels) reveals.

The val and test splits are never in the pool. The same is repeated for several seeds (the
seed sets the initial labels, the head's initialisation and batch order, and random picks),
and every figure is given as the mean over seeds with a t interval (95 %). The headline: the
labels each strategy needs to reach a target macro-F1 (default 90 % of the macro-F1 of a
head trained on the whole pool, mean over seeds), against random, paired by seed.

    python -m bench.active_learning --features data/features/efficientnet_lite0 --out results/al
    python -m bench.active_learning --synthetic 17,200,256 --out results/al-synthetic

``--out`` is a folder: active_learning.md (tables), rounds.csv (one row per seed, strategy and
round), summary.csv (one row per strategy), full_pool.csv (the head on the whole pool, per seed)
and test_predictions.npz (every round's test predictions, behind the bootstrap intervals).

``unknown_first`` needs an unknown score from outside (an open-set detector) that this
simulation does not have: it is given a stand-in, each pool image's distance to the nearest
class mean of the labelled features, so that the strategy's plumbing is exercised; its
figures say nothing about a real detector.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import softmax
from sklearn import metrics as skm

from plankton_transfer.active import STRATEGIES, check_strategy, select
from plankton_transfer.data.features import load_split
from plankton_transfer.models.provenance import load_meta
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.evaluation.calibration import fit_temperature
from plankton_transfer.evaluation.metrics import balanced_accuracy

SPLITS = ("train", "val", "test")
CONFIDENCE = 0.95


# --- the one place that trains a head -------------------------------------------------------

def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seed: int, *,
               max_epochs: int = 100, classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A linear head on (x_train, y_train), early-stopped on (x_val, y_val): (weight (C, D), bias (C,)).

    The project's trainer with the study's protocol (params.yaml's ``train`` defaults: SGD lr
    0.001, momentum 0.9, batch 24, patience 20): models/heads.py train_linear_head;
    ``max_epochs`` replaces the cap of 100.
    ``classes`` defaults to the highest label in either set + 1. Every use of the trainer is in
    this function, so that swapping the trainer changes nothing else.
    """
    from plankton_transfer.models.heads import train_linear_head
    from plankton_transfer.params.train import TrainParams
    from plankton_transfer.runtime import seed_everything, use_deterministic_algorithms

    seed_everything(seed)
    use_deterministic_algorithms()
    classes = classes or int(max(np.max(y_train), np.max(y_val))) + 1
    head = train_linear_head(x_train, y_train, x_val, y_val, classes, TrainParams(max_epochs=max_epochs), seed)
    return head.weight.numpy().astype(np.float32), head.bias.numpy().astype(np.float32)


Trainer = Callable[..., tuple[np.ndarray, np.ndarray]]


# --- data -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Data:
    x: dict[str, np.ndarray]  # split -> float16 (N, D); train is the pool
    y: dict[str, np.ndarray]  # split -> int64 (N,)
    classes: list[str]
    source: str


def load_features(folder: str | Path) -> Data:
    """A features folder as the extract stage writes it (train = pool, val, test)."""
    x, y = {}, {}
    for split in SPLITS:
        features, labels = load_split(folder, split)
        x[split], y[split] = np.asarray(features), np.asarray(labels, dtype=np.int64)
    meta = load_meta(folder)
    return Data(x, y, list(meta.classes), f"features {folder} ({meta.backbone}, {meta.feature_dim}-d)")


def synthetic_data(classes: int, per_class: int, dim: int, separation: float = 4.0, imbalance: float = 1.0,
                   seed: int = 0) -> Data:
    """Gaussian classes (unit noise; centres drawn at random, about ``separation`` apart),
    split 80/10/10 within each class like the pipeline, as float16. With ``imbalance`` R > 1,
    class c has ``per_class * R ** (-c / (classes - 1))`` images (the largest R times the smallest)."""
    if classes < 2 or per_class < 10 or dim < 1:
        raise UserError(f"--synthetic {classes},{per_class},{dim}: need at least 2 classes, 10 images per class "
                        "and 1 dimension")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * separation / math.sqrt(2 * dim)
    x: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    y: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(classes):
        n = max(10, round(per_class * imbalance ** (-c / max(classes - 1, 1))))
        rows = centres[c] + rng.normal(size=(n, dim))
        n_val = n_test = max(1, round(0.1 * n))
        parts = {"train": rows[:n - n_val - n_test], "val": rows[n - n_val - n_test:n - n_test], "test": rows[n - n_test:]}
        for split, part in parts.items():
            x[split].append(part)
            y[split].append(np.full(len(part), c, dtype=np.int64))
    names = [f"class_{c:02d}" for c in range(classes)]
    desc = f"synthetic: {classes} Gaussian classes x {per_class} images, {dim}-d, separation {separation}" + \
        (f", imbalance {imbalance:g}" if imbalance != 1 else "")
    return Data({s: np.concatenate(x[s]).astype(np.float16) for s in SPLITS},
                {s: np.concatenate(y[s]) for s in SPLITS}, names, desc)


# --- one simulated loop ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    start_per_class: int = 2
    per_round: int = 20
    rounds: int = 10
    max_epochs: int = 100


def initial_labels(y_pool: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random pool indices of each class (all of a class that has fewer)."""
    rng = np.random.default_rng([seed, 1])
    picks = [rng.permutation(np.flatnonzero(y_pool == c))[:per_class] for c in np.unique(y_pool)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def logits_of(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) @ weight.T + bias


def predict(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    return logits_of(weight, bias, x).argmax(axis=1)


def scores(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = predict(weight, bias, x)
    labels = np.arange(weight.shape[0])
    return {"macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
            "balanced_accuracy": balanced_accuracy(y, pred), "accuracy": float((pred == y).mean())}


def unknown_stand_in(x_pool: np.ndarray, x_labelled: np.ndarray, y_labelled: np.ndarray) -> np.ndarray:
    """Distance of each pool image to the nearest class mean of the labelled images."""
    xl = np.asarray(x_labelled, dtype=np.float64)
    means = np.stack([xl[y_labelled == c].mean(axis=0) for c in np.unique(y_labelled)])
    xp = np.asarray(x_pool, dtype=np.float64)
    d2 = (xp ** 2).sum(1)[:, None] - 2 * xp @ means.T + (means ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def simulate(data: Data, strategy: str, seed: int, settings: Settings, trainer: Trainer = train_head,
             log: Callable[[str], None] | None = None) -> tuple[list[dict], list[np.ndarray], np.ndarray]:
    """One strategy's loop for one seed: a row per round (round 0: the initial labels), the
    labelled pool indices after each round and the test predictions of each round (rounds x
    test images). Only the pool (train) is ever offered to the strategy; val is for early
    stopping and calibration, test for scoring."""
    x_pool, y_pool = data.x["train"], data.y["train"]
    x_val, y_val, x_test, y_test = data.x["val"], data.y["val"], data.x["test"], data.y["test"]
    classes = len(data.classes)
    labelled = initial_labels(y_pool, settings.start_per_class, seed)
    rows, history, preds = [], [], []
    for rnd in range(settings.rounds + 1):
        history.append(labelled.copy())
        start = time.perf_counter()
        weight, bias = trainer(x_pool[labelled], y_pool[labelled], x_val, y_val, seed,
                               max_epochs=settings.max_epochs, classes=classes)
        train_seconds = time.perf_counter() - start
        row = {"seed": seed, "strategy": strategy, "round": rnd, "labelled": len(labelled),
               **scores(weight, bias, x_test, y_test), "train_seconds": train_seconds, "select_seconds": float("nan")}
        rows.append(row)
        preds.append(predict(weight, bias, x_test))
        if log:
            log(f"{strategy:>16} seed {seed} round {rnd:2d}: {len(labelled):5d} labels, macro-F1 {row['macro_f1']:.3f}, "
                f"retrain {train_seconds:.2f} s")
        rest = np.setdiff1d(np.arange(len(y_pool)), labelled)
        if rnd == settings.rounds or len(rest) == 0:
            break
        start = time.perf_counter()
        temperature = fit_temperature(logits_of(weight, bias, x_val), y_val)["temperature"]
        proba = softmax(logits_of(weight, bias, x_pool[rest]) / np.float32(temperature), axis=1)
        unknown = unknown_stand_in(x_pool[rest], x_pool[labelled], y_pool[labelled]) \
            if strategy == "unknown_first" else None
        picked, _ = select(strategy, min(settings.per_round, len(rest)), proba=proba, features=x_pool[rest],
                           labelled_features=x_pool[labelled], unknown_score=unknown, seed=seed * 100_003 + rnd)
        row["select_seconds"] = time.perf_counter() - start
        labelled = np.sort(np.concatenate([labelled, rest[picked]]))
    return rows, history, np.stack(preds)


# --- summaries ------------------------------------------------------------------------------

def t_interval(values, low: float = -math.inf, high: float = math.inf) -> tuple[float, float, float, int]:
    """Mean and the t interval of the mean over seeds (NaN bounds below 2 values), clipped to
    [low, high] (a metric's range: few seeds can give a t interval past it)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan"), 1
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, max(mean - half, low), min(mean + half, high), len(v)


def labels_to_target(rounds: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per strategy and seed: the labelled images at the first round whose macro-F1 reaches ``target`` (NaN: never)."""
    rows = []
    for (strategy, seed), g in rounds.groupby(["strategy", "seed"], sort=False):
        hit = g[g["macro_f1"] >= target]
        rows.append({"strategy": strategy, "seed": seed,
                     "labels": float(hit["labelled"].iloc[0]) if len(hit) else float("nan"),
                     "mean_macro_f1": float(g["macro_f1"].mean())})
    return pd.DataFrame(rows)


def summarise(rounds: pd.DataFrame, target: float, baseline: str = "random") -> pd.DataFrame:
    """One row per strategy: labels to the target, the labels saved against ``baseline`` (paired by
    seed, over the seeds where both reach it), the mean macro-F1 over the rounds (area under the
    learning curve) and its paired difference, and times."""
    need = labels_to_target(rounds, target)
    base = need[need["strategy"] == baseline].set_index("seed")
    out = []
    for strategy, g in need.groupby("strategy", sort=False):
        g = g.set_index("seed")
        mean, lo, hi, reached = t_interval(g["labels"], 0)
        row = {"strategy": strategy, "seeds": len(g), "reached": reached, "labels_mean": mean, "labels_lo": lo,
               "labels_hi": hi}
        if len(base):
            both = g.index.intersection(base.index)
            saved = base.loc[both, "labels"] - g.loc[both, "labels"]
            row.update(dict(zip(("saved_mean", "saved_lo", "saved_hi", "saved_seeds"), t_interval(saved))))
            row["saved_share"] = row["saved_mean"] / float(base.loc[saved.dropna().index, "labels"].mean()) \
                if saved.notna().any() else float("nan")
            mine, theirs = g.loc[both, "labels"].notna(), base.loc[both, "labels"].notna()
            row["only_this_reached"] = int((mine & ~theirs).sum())  # left out of 'saved': it saved more than counted
            row["only_baseline_reached"] = int((~mine & theirs).sum())
            diff = g.loc[both, "mean_macro_f1"] - base.loc[both, "mean_macro_f1"]
            row.update(dict(zip(("aulc_diff_mean", "aulc_diff_lo", "aulc_diff_hi"), t_interval(diff)[:3])))
        row.update(dict(zip(("aulc_mean", "aulc_lo", "aulc_hi"), t_interval(g["mean_macro_f1"], 0, 1)[:3])))
        r = rounds[rounds["strategy"] == strategy]
        row["train_seconds_mean"] = float(r["train_seconds"].mean())
        row["train_seconds_last_round"] = float(r[r["round"] == r["round"].max()]["train_seconds"].mean())
        row["select_seconds_mean"] = float(r["select_seconds"].mean())
        out.append(row)
    return pd.DataFrame(out)


def macro_f1_many(y_true: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 of each row of ``preds`` (K x n) against ``y_true`` (n), as scikit-learn's
    ``f1_score(labels=range(classes), average="macro", zero_division=0)``, in one pass."""
    k = len(preds)
    codes = np.arange(k)[:, None] * classes + preds
    tp = np.bincount(codes[preds == y_true[None, :]], minlength=k * classes).reshape(k, classes)
    predicted = np.bincount(codes.ravel(), minlength=k * classes).reshape(k, classes)
    denominator = predicted + np.bincount(y_true, minlength=classes)[None, :]
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros((k, classes)), where=denominator > 0)
    return f1.mean(axis=1)


def joint_bootstrap(preds: np.ndarray, y_test: np.ndarray, classes: int, labelled: np.ndarray, target: float,
                    strategies: list[str], resamples: int, seed: int = 0) -> pd.DataFrame:
    """Percentile intervals that also vary the test images: each resample draws the seeds with
    replacement and the test images with replacement within their class (the class counts
    stay), rescores every round's stored predictions, and recomputes each strategy's labels
    saved against random and its difference in mean macro-F1 over the rounds.

    ``preds``: (strategies, seeds, rounds, test images); ``labelled``: labels per round."""
    n_strategies, n_seeds, n_rounds, n_test = preds.shape
    flat = preds.reshape(-1, n_test)
    base = strategies.index("random")
    by_class = [np.flatnonzero(y_test == c) for c in np.unique(y_test)]
    rng = np.random.default_rng([seed, 2])
    saved = np.full((resamples, n_strategies), np.nan)
    diff = np.full((resamples, n_strategies), np.nan)
    for b in range(resamples):
        idx = np.concatenate([rng.choice(members, size=len(members)) for members in by_class])
        f1 = macro_f1_many(y_test[idx], flat[:, idx], classes).reshape(n_strategies, n_seeds, n_rounds)
        f1 = f1[:, rng.integers(n_seeds, size=n_seeds)]
        aulc = f1.mean(axis=2)
        diff[b] = (aulc - aulc[base]).mean(axis=1)
        reached = f1 >= target
        labels = np.where(reached.any(axis=2), labelled[reached.argmax(axis=2)], np.nan)
        gap = labels[base] - labels
        counted = np.isfinite(gap).sum(axis=1)
        saved[b] = np.where(counted > 0, np.nansum(gap, axis=1) / np.maximum(counted, 1), np.nan)
    tail = 50 * (1 - CONFIDENCE)
    with warnings.catch_warnings():  # a strategy that never reached the target: all-NaN, an interval of NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        saved_lo, saved_hi = np.nanpercentile(saved, [tail, 100 - tail], axis=0)
        diff_lo, diff_hi = np.nanpercentile(diff, [tail, 100 - tail], axis=0)
    return pd.DataFrame({"strategy": strategies, "saved_joint_lo": saved_lo, "saved_joint_hi": saved_hi,
                         "saved_joint_defined": np.isfinite(saved).mean(axis=0),
                         "aulc_diff_joint_lo": diff_lo, "aulc_diff_joint_hi": diff_hi,
                         "resamples": resamples})


def curve(rounds: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean [interval] of ``metric`` per round (rows) and strategy (columns)."""
    cells = {}
    for (strategy, rnd), g in rounds.groupby(["strategy", "round"], sort=False):
        mean, lo, hi, _ = t_interval(g[metric], 0, 1)
        cells.setdefault(strategy, {})[(rnd, int(g["labelled"].iloc[0]))] = \
            f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{mean:.3f}"
    table = pd.DataFrame(cells)
    table.index = pd.MultiIndex.from_tuples(table.index, names=["round", "labels"])
    return table.reset_index()


def fmt(mean: float, lo: float, hi: float, digits: int = 0, sign: bool = False) -> str:
    if not np.isfinite(mean):
        return "-"
    spec = f"{{:{'+' if sign else ''}.{digits}f}}"

    def f(v: float) -> str:
        return spec.format(round(v, digits) + 0.0)  # + 0.0: no "-0"

    return f(mean) + (f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) else "")


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(map(str, r)) + " |" for r in df.itertuples(index=False)])


def report(data: Data, settings: Settings, seeds: list[int], full: pd.DataFrame, target_fraction: float,
           target: float, rounds: pd.DataFrame, summary: pd.DataFrame, command: str) -> str:
    pool = len(data.y["train"])
    budget = rounds["labelled"].max()
    full_f1 = t_interval(full["macro_f1"], 0, 1)
    lines = [
        "# Active learning benchmark", "",
        f"Command: `{command}`", "",
        f"- data: {data.source}; {len(data.classes)} classes; pool (train) {pool}, val {len(data.y['val'])}, "
        f"test {len(data.y['test'])} images",
        f"- loop: {settings.start_per_class} labels per class to start, {settings.per_round} more per round, "
        f"{settings.rounds} rounds (up to {budget} labels, {budget / pool:.0%} of the pool); seeds {seeds}",
        f"- head: the study's protocol (SGD lr 0.001, momentum 0.9, batch 24, patience 20), max_epochs "
        f"{settings.max_epochs}; probabilities temperature-calibrated on val",
        f"- full pool ({pool} labels): macro-F1 {fmt(*full_f1[:3], digits=3)}; target: {target_fraction:.0%} of its "
        f"mean = **{target:.3f}**",
        f"- intervals: {CONFIDENCE:.0%} t intervals over the {len(seeds)} seeds (the seed sets the initial labels, "
        "the head's initialisation and batch order, and random picks); 'labels needed' averages the seeds that "
        "reached the target within the budget; 'saved' is paired by seed, over the seeds "
        "where both strategies reach the target (a seed where only one does is counted beside it: a saving larger, "
        "or smaller, than any figure of the interval); labels are counted at round granularity "
        f"({settings.per_round} per round). The t intervals hold the test split fixed: the columns 'test images "
        f"resampled too' are {CONFIDENCE:.0%} percentile intervals of {int(summary['resamples'].iloc[0])} resamples "
        "that also draw the test images with replacement within their class (and the seeds with replacement), "
        "so they include the noise of a small test split",
        "- 'mean macro-F1 over rounds' is the area under the learning curve (rounds weighted equally); its "
        "difference vs random is paired by seed", "",
        "## Labels needed to reach the target macro-F1", "",
    ]

    def cells(prefix: str, digits: int, share: bool = False) -> list[str]:
        out = []
        for _, r in summary.iterrows():
            text = fmt(r[f"{prefix}_mean"], r[f"{prefix}_lo"], r[f"{prefix}_hi"], digits, sign=True)
            if share and np.isfinite(r["saved_share"]):
                text += f" ({r['saved_share']:+.0%})"
            if share and r["only_this_reached"]:
                text += f"; +{r['only_this_reached']} seed(s) where only this reached it"
            if share and r["only_baseline_reached"]:
                text += f"; +{r['only_baseline_reached']} seed(s) where only random reached it"
            out.append(text)
        return out

    def joint(prefix: str, digits: int) -> list[str]:
        """The bootstrap interval; for labels saved only where the seeds' estimate exists, with the
        share of resamples in which both strategies reached the target when it is under 95 %."""
        spec, out = f"{{:+.{digits}f}}", []

        def f(v: float) -> str:
            return spec.format(round(v, digits) + 0.0)
        for _, r in summary.iterrows():
            lo, hi = r[f"{prefix}_joint_lo"], r[f"{prefix}_joint_hi"]
            if not (np.isfinite(lo) and np.isfinite(r[f"{prefix}_mean"])):
                out.append("-")
                continue
            defined = r["saved_joint_defined"] if prefix == "saved" else 1.0
            out.append(f"[{f(lo)}, {f(hi)}]" + (f" (in {defined:.0%})" if defined < 0.95 else ""))
        return out

    head = pd.DataFrame({
        "strategy": summary["strategy"],
        "seeds reaching target": [f"{r}/{s}" for r, s in zip(summary["reached"], summary["seeds"])],
        "labels needed": [fmt(m, lo, hi) for m, lo, hi in zip(summary["labels_mean"], summary["labels_lo"],
                                                              summary["labels_hi"])],
        "saved vs random": cells("saved", 0, share=True),
        "saved, test images resampled too": joint("saved", 0),
        "mean macro-F1 over rounds": [fmt(m, lo, hi, 3) for m, lo, hi in zip(summary["aulc_mean"], summary["aulc_lo"],
                                                                             summary["aulc_hi"])],
        "difference vs random": cells("aulc_diff", 3),
        "difference, test images resampled too": joint("aulc_diff", 3),
    })
    lines += [markdown_table(head), "",
              "## Test macro-F1 per round (mean [interval] over seeds)", "", markdown_table(curve(rounds, "macro_f1")), "",
              "## Test balanced accuracy per round", "", markdown_table(curve(rounds, "balanced_accuracy")), "",
              "## Time per round (seconds, mean over seeds and rounds)", "",
              markdown_table(pd.DataFrame({
                  "strategy": summary["strategy"],
                  "retrain": summary["train_seconds_mean"].map("{:.2f}".format),
                  "retrain, last round": summary["train_seconds_last_round"].map("{:.2f}".format),
                  "probabilities + selection": summary["select_seconds_mean"].map("{:.3f}".format)})), ""]
    if "unknown_first" in set(summary["strategy"]):
        lines += ["unknown_first ran on a stand-in unknown score (distance to the nearest labelled class mean); "
                  "its row says nothing about a real open-set detector.", ""]
    return "\n".join(lines)


# --- command --------------------------------------------------------------------------------

def parse_synthetic(text: str) -> tuple[int, int, int]:
    try:
        classes, per_class, dim = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--synthetic {text!r}: give classes,per_class,dim, e.g. 17,200,256") from None
    return classes, per_class, dim


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="a features folder (train.npy, val.npy, test.npy, *_labels.npy, meta.json)")
    src.add_argument("--synthetic", help="classes,per_class,dim: Gaussian classes instead of extracted features")
    ap.add_argument("--separation", type=float, default=4.0, help="synthetic: distance between class centres in noise sds")
    ap.add_argument("--imbalance", type=float, default=1.0, help="synthetic: largest / smallest class size")
    ap.add_argument("--out", required=True, help="folder for active_learning.md, rounds.csv and summary.csv")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated (random is always added)")
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
    ap.add_argument("--start-per-class", type=int, default=2)
    ap.add_argument("--per-round", type=int, default=None, help="images labelled per round (default: one per class)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=100, help="the head's epoch cap (the study's 100)")
    ap.add_argument("--target", type=float, default=0.9, help="target macro-F1 as a fraction of the full pool's")
    ap.add_argument("--resamples", type=int, default=1000, help="resamples of the seeds-and-test-images bootstrap")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny heads run fastest on one)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        strategies = ["random"] + [check_strategy(s.strip()) for s in args.strategies.split(",")
                                   if s.strip() and s.strip() != "random"]
    except ValueError as err:
        raise UserError(str(err)) from None
    for name in ("seeds", "start_per_class", "rounds", "max_epochs", "threads", "resamples"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.target <= 1:
        raise UserError(f"--target must be in (0, 1], got {args.target}")
    import torch
    torch.set_num_threads(args.threads)
    data = synthetic_data(*parse_synthetic(args.synthetic), separation=args.separation, imbalance=args.imbalance) \
        if args.synthetic else load_features(args.features)
    settings = Settings(args.start_per_class, args.per_round or len(data.classes), args.rounds, args.max_epochs)
    if settings.per_round < 1:
        raise UserError(f"--per-round must be at least 1, got {settings.per_round}")
    seeds = list(range(args.seeds))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{data.source}: pool {len(data.y['train'])}, val {len(data.y['val'])}, test {len(data.y['test'])}")

    full = []
    for seed in seeds:
        start = time.perf_counter()
        w, b = train_head(data.x["train"], data.y["train"], data.x["val"], data.y["val"], seed,
                          max_epochs=settings.max_epochs, classes=len(data.classes))
        full.append({"seed": seed, **scores(w, b, data.x["test"], data.y["test"]),
                     "train_seconds": time.perf_counter() - start})
        log(f"full pool, seed {seed}: macro-F1 {full[-1]['macro_f1']:.3f} ({full[-1]['train_seconds']:.1f} s)")
    full_df = pd.DataFrame(full)
    target = args.target * float(full_df["macro_f1"].mean())

    rows, preds = [], []
    try:
        for strategy in strategies:
            for seed in seeds:
                strategy_rows, _, strategy_preds = simulate(data, strategy, seed, settings, log=log)
                rows += strategy_rows
                preds.append(strategy_preds)
    except ValueError as err:
        raise UserError(f"selection failed: {err}") from None
    rounds = pd.DataFrame(rows)
    preds_array = np.stack(preds).reshape(len(strategies), len(seeds), *preds[0].shape)
    labelled = rounds[(rounds["strategy"] == "random") & (rounds["seed"] == seeds[0])]["labelled"].to_numpy()
    boot = joint_bootstrap(preds_array, data.y["test"], len(data.classes), labelled, target, strategies,
                           args.resamples)
    summary = summarise(rounds, target).merge(boot, on="strategy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds.to_csv(out / "rounds.csv", index=False)
    full_df.to_csv(out / "full_pool.csv", index=False)
    np.savez_compressed(out / "test_predictions.npz", predictions=preds_array, y_test=data.y["test"],
                        strategies=np.array(strategies), seeds=np.array(seeds), labelled=labelled)
    summary.assign(target=target).to_csv(out / "summary.csv", index=False)
    command = "python -m bench.active_learning " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = report(data, settings, seeds, full_df, args.target, target, rounds, summary, command)
    (out / "active_learning.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    run_cli(main)
