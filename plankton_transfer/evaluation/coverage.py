"""Coverage of the metric intervals, measured by simulation from known truths.

What is simulated. A *truth* is a matrix of confusion rates R[true, predicted] (row c: where
class c's images go; it sums to 1) and the number of test images of each class, n_c. The test
split is stratified, so the n_c are held fixed and everything is conditional on them. One
simulated test set draws each class's row of counts from Multinomial(n_c, R[c]); an interval
method then sees only those counts, as evaluate does.

The estimands (what a 95 % interval should contain 95 % of the time), functions of the truth:

- accuracy: sum_c n_c R[c, c] / N, the expected test accuracy for these class counts;
- balanced accuracy: the mean of the true recalls R[c, c] over the classes;
- macro-F1: the macro-F1 of the expected confusion matrix E = diag(n) R, mean_c 2 E[c, c] /
  (row sum + column sum of E): the F1 of the population of images in the test's class mix. It is
  not the mean of the test set's macro-F1, which is biased when n_c is small.

A *regime* fixes the n_c and how its truths are drawn:

- class recalls: logit R[c, c] = logit(m) + spread z_c + size_slope (log n_c - mean log n) -
  rare_drop [n_c <= 3], z_c standard normal, m = 1/C (``chance``: no better than guessing on
  average, some classes above, some below), 0.75 (``middle``) or 0.97 (``perfect``);
- errors: a class's wrong share 1 - R[c, c] is split over the other classes by Dirichlet(1)
  at chance level (spread out) and Dirichlet(0.3) otherwise (a few look-alikes take most errors).

Each regime draws ``n_truths`` truths once (seeded by the regime's name and the seed) and then
as many test sets from each; coverage is the fraction of all those test sets whose interval
contains its truth's value, i.e. the coverage averaged over truths of that kind (a method can
cover one particular truth more or less often, the more so with few images), with Monte-Carlo
standard error sqrt(p (1 - p) / reps). Every method is scored on the same test sets.
``bench/coverage.py`` runs the full table (docs/coverage.md), tests/test_intervals_coverage.py a
small part of it.
"""
from __future__ import annotations

import dataclasses
import time
import zlib

import numpy as np
from scipy.special import expit, logit

from plankton_transfer.evaluation.intervals import (DRAWS, METRICS, balanced_accuracy_of, central_interval,
                                                    interval_with_note, macro_f1_of, methods_for_counts,
                                                    wilson_interval)

LEVELS = {"middle": 0.75, "perfect": 0.97}  # "chance": 1 / C
ERROR_CONCENTRATION = {"chance": 1.0, "middle": 0.3, "perfect": 0.3}
# the methods scored: intervals.py's, and "posterior-widened", the posterior as the code reported it
# before (widened to hold the estimate)
SIMULATED_METHODS = ("auto", "pooled", "pooled-pivot", "posterior", "posterior-widened", "bootstrap")
TARGET = (0.93, 0.97)  # the band a 95 % interval's coverage should lie in


@dataclasses.dataclass(frozen=True)
class Regime:
    name: str
    support: tuple[int, ...]  # test images per class
    level: str  # chance | middle | perfect
    spread: float = 1.0  # standard deviation of the class recalls' logits
    size_slope: float = 0.0  # how much a class's recall logit rises with log n_c
    rare_drop: float = 0.0  # how much lower the recall logit of a class of at most 3 test images is

    @property
    def n_classes(self) -> int:
        return len(self.support)


@dataclasses.dataclass(frozen=True)
class Truth:
    rates: np.ndarray  # R[true, predicted], rows sum to 1
    support: np.ndarray  # n_c
    accuracy: float
    balanced_accuracy: float
    macro_f1: float


def truth_from_rates(rates: np.ndarray, support) -> Truth:
    """The estimands of a confusion-rate matrix and class counts (see the module's docstring)."""
    support = np.asarray(support, dtype=float)
    expected = rates * support[:, None]
    return Truth(rates=rates, support=support, accuracy=float(np.trace(expected) / support.sum()),
                 balanced_accuracy=float(balanced_accuracy_of(expected[None])[0]),
                 macro_f1=float(macro_f1_of(expected[None])[0]))


def draw_truth(regime: Regime, rng: np.random.Generator) -> Truth:
    n_classes, support = regime.n_classes, np.asarray(regime.support, dtype=float)
    centre = 1 / n_classes if regime.level == "chance" else LEVELS[regime.level]
    log_n = np.log(support)
    recall = expit(logit(centre) + regime.spread * rng.normal(size=n_classes)
                   + regime.size_slope * (log_n - log_n.mean()) - regime.rare_drop * (support <= 3))
    rates = np.eye(n_classes)
    for c in range(n_classes if n_classes > 1 else 0):
        others = np.arange(n_classes) != c
        split = rng.dirichlet(np.full(n_classes - 1, ERROR_CONCENTRATION[regime.level]))
        rates[c, others], rates[c, c] = (1 - recall[c]) * split, recall[c]
    return truth_from_rates(rates, support)


def draw_counts(truth: Truth, rng: np.random.Generator) -> np.ndarray:
    """One simulated test set: counts[true, predicted], each class's row Multinomial(n_c, R[c])."""
    return np.stack([rng.multinomial(int(n), row) for n, row in zip(truth.support, truth.rates)]).astype(float)


def observed_metrics(counts: np.ndarray) -> dict[str, float]:
    return {"balanced_accuracy": float(balanced_accuracy_of(counts[None])[0]),
            "macro_f1": float(macro_f1_of(counts[None])[0])}


def method_intervals(counts: np.ndarray, methods, confidence: float, n_draws: int,
                     seed: int) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> metric -> (low, high) on one test set, as ``count_intervals`` gives them (each
    method's draws made once and shared, e.g. by ``auto`` and the method it picks)."""
    observed = observed_metrics(counts)
    draws: dict[str, dict[str, np.ndarray]] = {}

    def of(method: str) -> dict[str, np.ndarray]:
        if method not in draws:
            draws[method] = DRAWS[method](counts, n_draws, seed)
        return draws[method]

    out = {}
    for method in methods:
        if method == "posterior-widened":
            out[method] = {m: central_interval(of("posterior")[m], confidence, observed[m]) for m in METRICS}
        else:
            chosen = methods_for_counts(counts, method)
            out[method] = {m: interval_with_note(of(chosen[m])[m], confidence, observed[m], m)[:2] for m in METRICS}
    return out


def measure(regime: Regime, methods=SIMULATED_METHODS, reps: int = 400, n_truths: int = 20, n_draws: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """One row per (method, metric), Wilson's accuracy row first: coverage of the truth, its
    Monte-Carlo s.e., mean width, and how often the interval misses its own estimate."""
    rng = np.random.default_rng([seed, zlib.crc32(regime.name.encode())])
    truths = [draw_truth(regime, rng) for _ in range(n_truths)]
    hits: dict[tuple[str, str], list[tuple[bool, float, bool]]] = {}
    start = time.perf_counter()
    for rep in range(reps):
        truth = truths[rep % n_truths]
        counts = draw_counts(truth, rng)
        correct, n = int(np.trace(counts)), int(counts.sum())
        estimate = {"accuracy": correct / n} | observed_metrics(counts)
        intervals = {"wilson": {"accuracy": wilson_interval(correct, n, confidence)}}
        intervals |= method_intervals(counts, methods, confidence, n_draws, seed + rep)
        for method, by_metric in intervals.items():
            for metric, (low, high) in by_metric.items():
                hits.setdefault((method, metric), []).append(
                    (low <= getattr(truth, metric) <= high, high - low,
                     low - 1e-9 <= estimate[metric] <= high + 1e-9))
    seconds = time.perf_counter() - start
    auto = methods_for_counts(np.diag(np.asarray(regime.support, dtype=float)))
    rows = []
    for (method, metric), values in hits.items():
        covered, width, holds = (np.array(v, dtype=float) for v in zip(*values))
        p = float(covered.mean())
        rows.append({"regime": regime.name, "classes": regime.n_classes, "images": int(sum(regime.support)),
                     "n_c": support_text(regime.support), "level": regime.level, "method": method,
                     "metric": metric, "coverage": p, "se": float(np.sqrt(p * (1 - p) / len(covered))),
                     "width": float(width.mean()), "misses_estimate": float(1 - holds.mean()), "reps": len(covered),
                     "truths": n_truths, "true_value": float(np.mean([getattr(t, metric) for t in truths])),
                     "auto_method": auto.get(metric, ""), "seconds": seconds})
    return rows


def support_text(support) -> str:
    sizes = sorted(set(support))
    return f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])


def _table(rows: list[dict], methods, cell, with_wilson: bool = True, last: tuple[str, object] | None = None) -> str:
    """Regimes x methods, one line per (regime, metric); ``cell(row)`` fills a method's cell;
    ``last``: (heading, function of the (regime, metric)'s rows) for one more column."""
    columns = [m for m in methods if any(r["method"] == m for r in rows)]
    by_key = {(r["regime"], r["metric"], r["method"]): r for r in rows}
    head = ["regime", "classes x n_c", "metric", "true value", "auto uses"]
    head += (["Wilson (accuracy)"] if with_wilson else []) + columns + ([last[0]] if last else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for regime in dict.fromkeys(r["regime"] for r in rows):
        for metric in METRICS:
            first = by_key.get((regime, metric, columns[0]))
            if first is None:
                continue
            wilson = by_key.get((regime, "accuracy", "wilson"))
            cells = [regime, f"{first['classes']} x {first['n_c']}", metric.replace("_", " "),
                     f"{100 * first['true_value']:.1f}", first["auto_method"]]
            if with_wilson:
                cells.append(cell(wilson) if wilson and metric == METRICS[0] else "")
            cells += [cell(by_key[(regime, metric, m)]) for m in columns]
            if last:
                cells.append(last[1]([by_key[(regime, metric, m)] for m in columns]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def in_target(row: dict) -> bool:
    return TARGET[0] <= row["coverage"] <= TARGET[1]


def coverage_table(rows: list[dict], methods=SIMULATED_METHODS) -> str:
    """Coverage % (Monte-Carlo s.e.), bold inside ``TARGET``, and a last column naming the
    methods that reach it, or saying that none does."""

    def cell(r: dict) -> str:
        text = f"{100 * r['coverage']:.1f} ({100 * r['se']:.1f})"
        return f"**{text}**" if in_target(r) else text

    def reaching(rows_of_line: list[dict]) -> str:
        return ", ".join(r["method"] for r in rows_of_line if in_target(r) and r["method"] != "auto") or "**none**"

    return _table(rows, methods, cell, last=(f"reach {100 * TARGET[0]:g}-{100 * TARGET[1]:g} %", reaching))


def width_table(rows: list[dict], methods=SIMULATED_METHODS) -> str:
    """Mean interval width in percentage points."""
    return _table(rows, methods, lambda r: f"{100 * r['width']:.1f}")


def misses_table(rows: list[dict], methods=SIMULATED_METHODS) -> str:
    """How often (%) an interval does not contain its own estimate."""
    return _table(rows, methods, lambda r: f"{100 * r['misses_estimate']:.1f}", with_wilson=False)


def long_tail(n_classes: int = 40, largest: int = 100) -> tuple[int, ...]:
    """Test counts from 1 to ``largest``, evenly spaced on a log scale (a long-tailed plankton split)."""
    return tuple(int(round(v)) for v in np.geomspace(1, largest, n_classes))


SAMPLE_SUPPORT = (1, 2, 2, 2, 2, 1)  # the bundled sample's test split: 6 classes, 10 images


def standard_regimes() -> list[Regime]:
    """The full simulation's regimes: (a) few classes with many images, (b) many classes with 1-6
    images and the bundled sample's shape, each at chance, middle and near-perfect level; (c)
    checks of the choice: classes more or less alike, counts near the posterior/pooled threshold,
    long tails (with rare classes no different, steadily worse, or much worse)."""
    shapes = {"6x100": (100,) * 6, "120x3": (3,) * 120, "34x6": (6,) * 34, "sample": SAMPLE_SUPPORT}
    regimes = [Regime(f"{name} {level}", support, level)
               for name, support in shapes.items() for level in ("chance", "middle", "perfect")]
    return regimes + [
        Regime("34x6 middle, classes alike", (6,) * 34, "middle", spread=0.5),
        Regime("34x6 middle, classes disparate", (6,) * 34, "middle", spread=2.0),
        Regime("sample middle, classes disparate", SAMPLE_SUPPORT, "middle", spread=2.0),
        Regime("12x20 middle", (20,) * 12, "middle"),
        Regime("12x30 middle", (30,) * 12, "middle"),
        Regime("12x30 perfect", (30,) * 12, "perfect"),
        Regime("tail 40x1-100 chance", long_tail(), "chance"),
        Regime("tail 40x1-100 middle", long_tail(), "middle"),
        Regime("tail 40x1-100 perfect", long_tail(), "perfect"),
        Regime("tail 40x1-100 middle, rare worse", long_tail(), "middle", size_slope=0.5),
        Regime("tail 40x1-100 middle, rarest much worse", long_tail(), "middle", rare_drop=1.5),
        Regime("tail 10x1-10 middle", long_tail(10, 10), "middle"),
        Regime("tail 100x1-300 middle", long_tail(100, 300), "middle"),
    ]


QUICK = ("6x100 middle", "34x6 chance", "34x6 middle", "sample middle", "120x3 perfect", "tail 40x1-100 middle")


def quick_regimes() -> list[Regime]:
    return [r for r in standard_regimes() if r.name in QUICK]
