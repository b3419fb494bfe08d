"""Intervals for the headline numbers: a test set of tens of images needs them.

- accuracy: the Wilson score interval (statsmodels ``proportion_confint``), which stays inside
  0..1 and keeps its coverage at n = 10, where the normal approximation does neither;
- balanced accuracy and macro-F1 (``stats.interval_method``), each a central interval of seeded
  draws (``stats.resamples`` of them, seed ``base.seed``):

  ``posterior``: each class's row of the confusion matrix (where its test images went) drawn on
  its own from its Dirichlet posterior with a Jeffreys prior (half an image on "right", half an
  image spread over the wrong classes: the class's recall is Beta(k + 1/2, n - k + 1/2));
  balanced accuracy is then Brodersen et al. (2010)'s posterior extended to many classes. The
  prior pulls each recall towards 50 % (mean (k + 1/2) / (n + 1)), and balanced accuracy with
  it, by far more than the interval's width when a model is near chance or near perfect and the
  classes have few test images: in docs/coverage.md its 95 % interval holds the true value in
  0-13 % of the simulated test sets of 120 classes x 3 images, and in 77 % at 12 x 30 near
  perfect.

  ``bootstrap``: the stratified bootstrap (each class's test images resampled within the
  class). A class of one or two test images cannot vary, so it is far too narrow there (it gave
  16.7 [16.7, 16.7] on the bundled sample).

  ``pooled``: partial pooling across classes, a hierarchical Beta-binomial model fitted to the
  same test set. Class c's recall r_c ~ Beta(mu_c kappa, (1 - mu_c) kappa), logit mu_c = alpha +
  beta (log n_c - mean log n) (beta: the class size may matter, rare taxa often being harder;
  0 when every class has the same count), k_c ~ Binomial(n_c, r_c). The hyperparameters' posterior
  is computed on a grid (priors: expit(alpha) uniform, beta uniform on -2..2, log kappa uniform
  on log 0.3..log 10^4), each draw takes (alpha, beta, kappa) from it and then every recall from
  Beta(mu_c kappa + k_c, (1 - mu_c) kappa + n_c - k_c): a class of few images borrows strength
  from the others instead of from a fixed 50 %. For macro-F1, a class's wrong share 1 - r_c goes
  to the classes its errors went to, Dirichlet(its wrong counts, 1/2 "elsewhere"), "elsewhere"
  spread evenly; the draw's macro-F1 is that of the expected counts.

  ``pooled-pivot``: the same model used only for the spread: it simulates new test sets of the
  same class counts from each draw and takes the estimate's error (estimate - truth of the draw);
  the interval is the observed value minus that error's quantiles, on the arcsine-square-root
  scale. Centred on the observed value, so a misfit of the pooled mean does not move it.

  ``auto`` (default) picks from the smallest and largest class test counts, by the coverage
  measured in docs/coverage.md (``methods_for_counts``): ``pooled`` when they are within a
  factor of 10; for a long tail (largest > 10 x smallest), ``pooled`` for balanced accuracy and
  ``pooled-pivot`` for macro-F1, whose pooled posterior is too narrow there for the shrinkage of
  the rare classes. ``interval_method_for`` names the choice; evaluate records it.

The estimate and its interval: an estimate at the end of the range (0 or 1: nothing or
everything right) takes that end as its interval's end (Brown, Cai and DasGupta 2001 do so for
x = 0 or n). Any other interval that misses its estimate is returned as the method gives it,
with a note (``metric_intervals_noted``; evaluate records the notes): nothing is widened
silently. (The posterior used to be widened to hold the estimate, which turned a wrong interval
into "1.5 [1.5, 15.4]".)

Draws are chunked (posterior, bootstrap) or kept to draws x classes (pooled), so memory stays
flat whatever the number of classes.
"""
from __future__ import annotations

import numpy as np
from scipy.special import betaln, expit
from statsmodels.stats.proportion import proportion_confint

METHODS = ("auto", "pooled", "posterior", "bootstrap", "pooled-pivot")
METRICS = ("balanced_accuracy", "macro_f1")
TAIL_RATIO = 10  # auto: pooled-pivot for macro-F1 when n_max > TAIL_RATIO x n_min (class test counts)
CHUNK_CELLS = 4_000_000  # draws x classes x classes held at once (32 MB)
JEFFREYS = 0.5  # prior weight on a class's correct cell, and in total on its wrong cells
UNSEEN_WEIGHT = 0.5  # pooled: prior weight, in images, of a class's errors going to classes not seen
POOLED_ALPHA_RANGE = (-9.0, 9.0)  # pooled: prior range of alpha, the recalls' centre (logit)
POOLED_SLOPE_RANGE = (-2.0, 2.0)  # pooled: prior range of beta, how that centre moves with log n_c
POOLED_KAPPA_RANGE = (0.3, 1e4)  # pooled: prior range of kappa, how alike the class recalls are
POOLED_FINE_GRID = (41, 13, 20)  # pooled: grid points of alpha, beta, log kappa where the posterior lies
BOUNDARY_TOLERANCE = 1e-9


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n``; (0, 1) when there is nothing to count."""
    if n == 0:
        return 0.0, 1.0
    low, high = proportion_confint(int(correct), int(n), alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return counts


def posterior_rate_draws(counts: np.ndarray, n_draws: int, seed: int) -> np.ndarray:
    """(n_draws, C, C) draws of each present class's row of confusion rates; absent classes' rows are 0."""
    n_classes = len(counts)
    rng = np.random.default_rng(seed)
    prior = np.full((n_classes, n_classes), JEFFREYS / max(n_classes - 1, 1))
    np.fill_diagonal(prior, JEFFREYS)
    rates = np.zeros((n_draws, n_classes, n_classes))
    for c in np.flatnonzero(counts.sum(axis=1) > 0):
        rates[:, c, :] = rng.dirichlet(counts[c] + prior[c], size=n_draws)
    return rates


def balanced_accuracy_of(counts: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present (support > 0), for each matrix of a (b, C, C) stack of
    counts (or expected counts), as scikit-learn's ``balanced_accuracy_score``."""
    support = counts.sum(axis=2)
    recall = np.divide(np.diagonal(counts, axis1=1, axis2=2), support, out=np.zeros(support.shape),
                       where=support > 0)
    return recall.sum(axis=1) / np.maximum((support > 0).sum(axis=1), 1)


def macro_f1_of(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 over all C classes (0 for a class never true nor predicted), as scikit-learn's
    ``f1_score(labels=range(C), average="macro", zero_division=0)``."""
    tp = np.diagonal(counts, axis1=1, axis2=2).astype(float)
    denominator = counts.sum(axis=2) + counts.sum(axis=1)  # 2tp + fn + fp
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    return f1.mean(axis=1)


def central_interval(values: np.ndarray, confidence: float, observed: float | None = None) -> tuple[float, float]:
    """The central ``confidence`` part of ``values`` (its alpha/2 and 1 - alpha/2 quantiles), widened
    to contain ``observed`` when given (paired.py's bootstrap of an accuracy difference does;
    the metric intervals below do not: see ``interval_with_note``)."""
    alpha = 1 - confidence
    low, high = (float(v) for v in np.quantile(values, [alpha / 2, 1 - alpha / 2]))
    if observed is not None:
        low, high = min(low, observed), max(high, observed)
    return low, high


def interval_with_note(values: np.ndarray, confidence: float, observed: float, label: str) -> tuple[float, float, str]:
    """The central interval of ``values``, with one rule and one note about the estimate ``observed``.

    Rule: an estimate at the end of the metric's range (0: nothing right; 1: everything right)
    takes that end as its interval's end, as Brown, Cai and DasGupta (2001) do for x = 0 or n:
    no draw can lie beyond it, and the central interval of draws just inside it would exclude the
    very value seen. Note: any other interval that misses the estimate is returned as it is (the
    method's own answer, e.g. a posterior that has pulled a class's recall away from its observed
    value) together with a sentence saying so, never silently widened.
    """
    low, high = central_interval(values, confidence)
    if observed <= BOUNDARY_TOLERANCE:
        low = 0.0
    elif observed >= 1 - BOUNDARY_TOLERANCE:
        high = 1.0
    if low - BOUNDARY_TOLERANCE <= observed <= high + BOUNDARY_TOLERANCE:
        return low, high, ""
    side = "below" if observed < low else "above"
    return low, high, (f"{label}: the estimate {observed:.4f} lies {side} its {100 * confidence:g} % interval "
                       f"[{low:.4f}, {high:.4f}]")


def posterior_draws(counts: np.ndarray, n_draws: int, seed: int) -> dict[str, np.ndarray]:
    """Balanced accuracy and macro-F1 of every posterior draw (expected counts: n_c x drawn rates)."""
    n_classes = len(counts)
    support = counts.sum(axis=1)
    chunk = max(1, CHUNK_CELLS // (n_classes * n_classes))
    balanced, f1 = [], []
    for i, start in enumerate(range(0, n_draws, chunk)):
        expected = posterior_rate_draws(counts, min(chunk, n_draws - start), seed + i) * support[None, :, None]
        balanced.append(balanced_accuracy_of(expected))
        f1.append(macro_f1_of(expected))
    return {"balanced_accuracy": np.concatenate(balanced), "macro_f1": np.concatenate(f1)}


def posterior_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_draws: int,
                      seed: int) -> dict[str, np.ndarray]:
    """``posterior_draws`` of the confusion counts of ``y_true`` and ``y_pred``."""
    return posterior_draws(confusion_counts(y_true, y_pred, n_classes), n_draws, seed)


def bootstrap_draws(counts: np.ndarray, n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Balanced accuracy and macro-F1 of every stratified bootstrap resample.

    Resampling a class's n_c test images with replacement draws its row of the confusion matrix
    from Multinomial(n_c, its observed row / n_c); drawing the rows directly is the same
    bootstrap without materialising index arrays.
    """
    n_classes = len(counts)
    support = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // (n_classes * n_classes))
    balanced, f1 = [], []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = np.zeros((size, n_classes, n_classes))
        for c in np.flatnonzero(support > 0):
            draws[:, c, :] = rng.multinomial(int(support[c]), counts[c] / support[c], size=size)
        balanced.append(balanced_accuracy_of(draws))
        f1.append(macro_f1_of(draws))
    return {"balanced_accuracy": np.concatenate(balanced), "macro_f1": np.concatenate(f1)}


def bootstrap_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_resamples: int,
                      seed: int) -> dict[str, np.ndarray]:
    """``bootstrap_draws`` of the confusion counts of ``y_true`` and ``y_pred``."""
    return bootstrap_draws(confusion_counts(y_true, y_pred, n_classes), n_resamples, seed)


def size_covariate(support: np.ndarray) -> np.ndarray:
    """log n_c minus its mean over the classes: what the pooled prior's centre may depend on."""
    log_n = np.log(np.asarray(support, dtype=float))
    return log_n - log_n.mean()


def pooled_log_posterior(correct: np.ndarray, support: np.ndarray, alphas: np.ndarray, slopes: np.ndarray,
                         log_kappas: np.ndarray) -> np.ndarray:
    """Log posterior density (up to a constant) of the hyperparameters on the grid alphas x slopes x
    log_kappas (see ``pooled_hyper_grid``), in those coordinates."""
    z = size_covariate(support)
    alpha = alphas[:, None, None]
    kappa = np.exp(log_kappas)[None, None, :]
    log_post = np.log(expit(alpha) * expit(-alpha)) + np.zeros((1, len(slopes), len(log_kappas)))
    for n in np.unique(support):
        of_size = support == n
        mu = expit(alpha + slopes[None, :, None] * z[of_size][0])
        a, b = mu * kappa, (1 - mu) * kappa
        log_post = log_post - of_size.sum() * betaln(a, b)
        for k, m in zip(*np.unique(correct[of_size], return_counts=True)):
            log_post = log_post + m * betaln(a + k, b + n - k)
    return log_post


def pooled_hyper_grid(correct: np.ndarray, support: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The hyperparameters' posterior on a grid: ([alphas, slopes, log_kappas], weights summing to 1).

    Model: k_c ~ Binomial(n_c, r_c), r_c ~ Beta(mu_c kappa, (1 - mu_c) kappa), logit mu_c = alpha +
    beta (log n_c - mean log n). Priors: expit(alpha) uniform on 0..1; beta uniform on
    ``POOLED_SLOPE_RANGE`` (0 when every class has the same count: nothing to tell it); log kappa
    uniform on ``POOLED_KAPPA_RANGE``. A coarse grid over the whole prior range finds where the
    posterior lies (within exp(-12) of its highest density), a fine one covers that box.
    """
    correct, support = np.asarray(correct, dtype=float), np.asarray(support, dtype=float)
    equal = support.min() == support.max()
    bounds = [POOLED_ALPHA_RANGE, (0.0, 0.0) if equal else POOLED_SLOPE_RANGE, np.log(POOLED_KAPPA_RANGE)]
    coarse = [np.linspace(lo, hi, 1 if lo == hi else size) for (lo, hi), size in zip(bounds, (37, 9, 14))]
    log_post = pooled_log_posterior(correct, support, *coarse)
    kept = np.nonzero(log_post > log_post.max() - 12)
    fine = []
    for grid, index, (lo, hi), size in zip(coarse, kept, bounds, POOLED_FINE_GRID):
        step = grid[1] - grid[0] if len(grid) > 1 else 0.0
        low, high = max(lo, grid[index.min()] - step), min(hi, grid[index.max()] + step)
        fine.append(np.linspace(low, high, 1 if low == high else size))
    log_post = pooled_log_posterior(correct, support, *fine)
    weights = np.exp(log_post - log_post.max())
    return fine, weights / weights.sum()


def pooled_recall_draws(correct: np.ndarray, support: np.ndarray, n_draws: int,
                        rng: np.random.Generator) -> np.ndarray:
    """(n_draws, len(correct)) draws of each class's recall from the hierarchical posterior:
    (alpha, beta, kappa) from their grid posterior (jittered uniformly within a grid cell), then each
    recall from Beta(mu_c kappa + k_c, (1 - mu_c) kappa + n_c - k_c)."""
    correct, support = np.asarray(correct, dtype=float), np.asarray(support, dtype=float)
    grids, weights = pooled_hyper_grid(correct, support)
    cells = np.unravel_index(rng.choice(weights.size, size=n_draws, p=weights.ravel()), weights.shape)

    def jitter(grid: np.ndarray, index: np.ndarray) -> np.ndarray:
        step = grid[1] - grid[0] if len(grid) > 1 else 0.0
        return grid[index] + rng.uniform(-step / 2, step / 2, len(index))

    alpha, slope, log_kappa = (jitter(grid, index) for grid, index in zip(grids, cells))
    mu = expit(alpha[:, None] + slope[:, None] * size_covariate(support)[None, :])
    kappa = np.exp(log_kappa)[:, None]
    return rng.beta(mu * kappa + correct[None, :], (1 - mu) * kappa + (support - correct)[None, :])


def pooled_recalls(counts: np.ndarray, n_draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """Each class's test count, the classes present, and (n_draws, C) recalls drawn from the
    partially pooled posterior (``pooled_recall_draws``; 1 for a single class)."""
    n_classes = len(counts)
    support = counts.sum(axis=1)
    present = np.flatnonzero(support > 0)
    recall = np.zeros((n_draws, n_classes))
    if n_classes == 1:
        recall[:, present] = 1.0  # one class: every prediction is that class
    elif len(present):
        recall[:, present] = pooled_recall_draws(np.diagonal(counts)[present], support[present], n_draws, rng)
    return support, present, recall


def predicted_totals(counts: np.ndarray, support: np.ndarray, present: np.ndarray, recall: np.ndarray,
                     rng: np.random.Generator, each_split=None) -> np.ndarray:
    """(n_draws, C) expected predicted total of each class: its true positives plus the wrong
    share of every other class, split over the classes its test images went to and an "unseen"
    part, Dirichlet(its wrong counts, ``UNSEEN_WEIGHT``), spread evenly over the other classes.
    ``each_split(c, seen, split)`` is called after each class's split is drawn (the simulation
    draws that class's new errors there, keeping one order of random draws)."""
    n_draws, n_classes = recall.shape
    predicted = recall * support[None, :]
    spread_total = np.zeros(n_draws)
    for c in present if n_classes > 1 else ():
        wrong = (1 - recall[:, c]) * support[c]
        seen = np.flatnonzero((counts[c] > 0) & (np.arange(n_classes) != c))
        split = rng.dirichlet(np.append(counts[c, seen], UNSEEN_WEIGHT), size=n_draws)
        predicted[:, seen] += wrong[:, None] * split[:, :-1]
        spread = wrong * split[:, -1] / (n_classes - 1)
        spread_total += spread
        predicted[:, c] -= spread  # spread over every class but c itself
        if each_split is not None:
            each_split(c, seen, split)
    return predicted + spread_total[:, None]


def mean_f1(true_positive: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Macro-F1 of each draw from its true positives and predicted totals (n_draws, C)."""
    denominator = support[None, :] + predicted
    return np.divide(2 * true_positive, denominator, out=np.zeros(denominator.shape),
                     where=denominator > 0).mean(axis=1)


def pooled_draws(counts: np.ndarray, n_draws: int, seed: int) -> dict[str, np.ndarray]:
    """Balanced accuracy and macro-F1 of every draw of the partially pooled posterior.

    Each present class's recall is drawn from the hierarchical posterior (``pooled_recall_draws``);
    its wrong share is split as ``predicted_totals`` says. Only true positives (n_c x recall) and
    each class's predicted total (column sum) enter macro-F1, so the draws are (n_draws, C):
    memory and time grow with C, not C^2.
    """
    rng = np.random.default_rng(seed)
    support, present, recall = pooled_recalls(counts, n_draws, rng)
    predicted = predicted_totals(counts, support, present, recall, rng)
    balanced = recall[:, present].mean(axis=1) if len(present) else np.zeros(n_draws)
    return {"balanced_accuracy": balanced, "macro_f1": mean_f1(recall * support[None, :], predicted, support)}


def pooled_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_draws: int,
                   seed: int) -> dict[str, np.ndarray]:
    """``pooled_draws`` of the confusion counts of ``y_true`` and ``y_pred``."""
    return pooled_draws(confusion_counts(y_true, y_pred, n_classes), n_draws, seed)


def pooled_simulation(counts: np.ndarray, n_draws: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Draws of the estimands under the pooled posterior (``truth``) and, for each, the estimate a
    new test set with the same class counts would give (``estimate``): k*_c ~ Binomial(n_c, r_c),
    its n_c - k*_c errors allocated by Multinomial(split) and the unseen part to random other classes."""
    n_classes = len(counts)
    rng = np.random.default_rng(seed)
    support, present, recall = pooled_recalls(counts, n_draws, rng)
    hits = rng.binomial(support.astype(int)[None, :], recall)
    predicted_hits = hits.astype(float)
    rows = np.arange(n_draws)

    def allocate(c: int, seen: np.ndarray, split: np.ndarray) -> None:
        allocated = rng.multinomial(int(support[c]) - hits[:, c], split)
        predicted_hits[:, seen] += allocated[:, :-1]
        lumped = allocated[:, -1]
        if lumped.any():
            who = np.repeat(rows, lumped)
            where = rng.integers(0, n_classes - 1, len(who))
            np.add.at(predicted_hits, (who, where + (where >= c)), 1)

    predicted = predicted_totals(counts, support, present, recall, rng, allocate)
    share = np.divide(hits, support[None, :], out=np.zeros(hits.shape), where=support[None, :] > 0)
    return {"truth": {"balanced_accuracy": recall[:, present].mean(axis=1),
                      "macro_f1": mean_f1(recall * support[None, :], predicted, support)},
            "estimate": {"balanced_accuracy": share[:, present].mean(axis=1),
                         "macro_f1": mean_f1(hits, predicted_hits, support)}}


def pooled_pivot_draws(counts: np.ndarray, n_draws: int, seed: int) -> dict[str, np.ndarray]:
    """Draws whose central interval is the pivot interval: the observed value minus the quantiles of
    the estimation error (estimate* - truth*, ``pooled_simulation``), taken on the arcsine-square-root
    scale, where a proportion's sampling spread depends least on where it lies; back on 0..1."""
    simulated = pooled_simulation(counts, n_draws, seed)
    observed = {"balanced_accuracy": float(balanced_accuracy_of(counts[None])[0]),
                "macro_f1": float(macro_f1_of(counts[None])[0])}

    def scale(p):
        return np.arcsin(np.sqrt(np.clip(p, 0.0, 1.0)))

    return {name: np.sin(np.clip(scale(observed[name]) - (scale(simulated["estimate"][name])
                                                          - scale(simulated["truth"][name])), 0.0, np.pi / 2)) ** 2
            for name in METRICS}


DRAWS = {"posterior": posterior_draws, "bootstrap": bootstrap_draws, "pooled": pooled_draws,
         "pooled-pivot": pooled_pivot_draws}


def methods_for_counts(counts: np.ndarray, method: str = "auto") -> dict[str, str]:
    """{metric: interval method} that ``method`` stands for on these counts: ``method`` itself for
    both metrics, or for ``auto``, from the smallest and largest class test counts n_min, n_max
    (classes with no test image left out; docs/coverage.md has the measurements behind the rule):
    ``pooled`` for both when n_max <= ``TAIL_RATIO`` (10) x n_min; for a long tail (a larger
    spread), ``pooled`` for balanced accuracy and ``pooled-pivot`` for macro-F1.
    """
    if method not in METHODS:
        raise ValueError(f"interval method {method!r}: expected one of {', '.join(METHODS)}")
    if method != "auto":
        return {name: method for name in METRICS}
    support = counts.sum(axis=1)
    present = support[support > 0]
    if len(present) == 0 or present.max() <= TAIL_RATIO * present.min():
        return {name: "pooled" for name in METRICS}
    return {"balanced_accuracy": "pooled", "macro_f1": "pooled-pivot"}


def describe_methods(methods: dict[str, str]) -> str:
    """One name when both metrics use the same method, else ``metric: method`` pairs."""
    if len(set(methods.values())) == 1:
        return next(iter(methods.values()))
    return ", ".join(f"{name}: {method}" for name, method in methods.items())


def interval_method_for(y_true: np.ndarray, n_classes: int, method: str = "auto") -> str:
    """Which method ``metric_intervals(..., method=method)`` uses for balanced accuracy and
    macro-F1 on these test labels (what evaluate records): ``posterior``, ``pooled``, ``bootstrap``,
    ``pooled-pivot``, or ``balanced_accuracy: pooled, macro_f1: pooled-pivot`` when they differ."""
    support = np.bincount(np.asarray(y_true, dtype=int), minlength=n_classes)
    return describe_methods(methods_for_counts(np.diag(support.astype(float)), method))


def count_intervals(counts: np.ndarray, confidence: float, n_draws: int, seed: int,
                    method: str = "auto") -> tuple[dict[str, float], list[str]]:
    """``metric_intervals`` of a confusion matrix of counts[true, predicted], with its notes."""
    counts = np.asarray(counts, dtype=float)
    n = int(counts.sum())
    low, high = wilson_interval(int(np.trace(counts)), n, confidence)
    out = {"accuracy_lo": low, "accuracy_hi": high}
    chosen = methods_for_counts(counts, method)
    if n == 0:
        return out | {"balanced_accuracy_lo": 0.0, "balanced_accuracy_hi": 1.0,
                      "macro_f1_lo": 0.0, "macro_f1_hi": 1.0}, []
    observed = {"balanced_accuracy": float(balanced_accuracy_of(counts[None])[0]),
                "macro_f1": float(macro_f1_of(counts[None])[0])}
    draws = {m: DRAWS[m](counts, n_draws, seed) for m in dict.fromkeys(chosen.values())}
    notes = []
    for name in METRICS:
        out[f"{name}_lo"], out[f"{name}_hi"], note = interval_with_note(
            draws[chosen[name]][name], confidence, observed[name], f"{name} ({chosen[name]})")
        notes += [note] if note else []
    return out, notes


def metric_intervals_noted(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, confidence: float,
                           n_draws: int, seed: int, method: str = "auto") -> tuple[dict[str, float], list[str]]:
    """``metric_intervals`` and a list of notes: one sentence for each interval that does not
    contain its estimate (empty when every interval does)."""
    return count_intervals(confusion_counts(y_true, y_pred, n_classes), confidence, n_draws, seed, method)


def metric_intervals(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, confidence: float,
                     n_draws: int, seed: int, method: str = "auto") -> dict[str, float]:
    """``accuracy_lo/hi`` (Wilson), ``balanced_accuracy_lo/hi`` and ``macro_f1_lo/hi`` (``method``:
    ``auto``, ``pooled``, ``posterior`` or ``bootstrap``; ``interval_method_for`` says which one
    ``auto`` used). Numbers only, for DVC metrics; ``metric_intervals_noted`` also returns the notes."""
    return metric_intervals_noted(y_true, y_pred, n_classes, confidence, n_draws, seed, method)[0]


def resample_indices(n: int, n_resamples: int, seed: int):
    """Chunks of plain bootstrap index rows (b, n): images drawn with replacement. Deterministic."""
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
