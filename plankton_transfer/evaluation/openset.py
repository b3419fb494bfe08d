"""Is an image of a class the head was never trained on? Post-hoc "unknown" scores on cached features.

A linear head forces every image into one of its classes; a taxon missing from the training set
is silently counted as something else. Four post-hoc scores flag such images, all computed from
the frozen features and the trained head (no retraining); for each, **higher means more likely
unknown**:

- ``msp``: 1 - the maximum softmax probability after temperature scaling (Hendrycks & Gimpel
  2017, "A baseline for detecting misclassified and out-of-distribution examples");
- ``energy``: the free energy ``-T logsumexp(logits / T)`` (Liu et al. 2020, "Energy-based
  out-of-distribution detection"), with the head's fitted temperature T;
- ``mahalanobis``: the smallest Mahalanobis distance to a class mean, with one covariance shared
  by all classes (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
  samples and adversarial attacks"), fitted on the training features. The feature dimension
  (1280-4096) exceeds the number of training images, where the sample covariance is singular,
  so the covariance is the Ledoit-Wolf shrinkage estimate (scikit-learn's ``LedoitWolf``
  formula, computed faster: :func:`ledoit_wolf`) of the within-class deviations (each training
  row minus its class mean);
- ``vim``: Virtual-logit Matching (Wang et al. 2022, "ViM: Out-of-distribution with
  virtual-logit matching", CVPR). Features are shifted to the head's origin
  ``u = -pinv(W) b``; the principal subspace is spanned by the top ``k`` right singular vectors of
  the shifted training features; an image's residual is the norm of its part outside that
  subspace, scaled by ``alpha`` = (mean max-logit) / (mean residual norm), both on the training
  features, to give a virtual logit ``v``. Score: ``v - logsumexp(logits)`` (raw logits, as in the
  paper), a monotone function of the virtual class's softmax probability.

  The subspace dimension ``k`` (:func:`vim_dimension`): the paper's rule, 1000 for features of
  2048 dimensions or more, 512 for 768 or more, half the dimension below that; but never more
  than half the rank of the shifted training features. On a small training set (fewer images
  than dimensions, the usual case here) every training row lies in the span of the training
  rows, so a subspace holding the whole span would leave training residuals of zero and an
  infinite alpha; keeping half the span outside the subspace leaves residuals of the training
  images that are comparable to those of new images of known classes.

Threshold (:func:`known_threshold`): the smallest score that keeps at least
``target_known_kept`` of the known *validation* images (score <= threshold: accepted as known).

Metrics (:func:`unknown_metrics`), unknown images as the positive class: AUROC and AUPR
(equal to scikit-learn's ``roc_auc_score`` and ``average_precision_score``, computed directly
for the bootstrap's sake), and FPR95, the fraction of
unknown images accepted as known at the threshold that keeps 95 % of the known images (the
same rule as :func:`known_threshold`, applied to the evaluated known images). Intervals: a
seeded percentile bootstrap, known and unknown images resampled separately
(:func:`metric_intervals`).

Leave-classes-out (:func:`leave_classes_out`): with no real unknown taxa at hand, some known
classes are held out in turn and play the unknowns. Per repeat: a head is trained on the other
classes' training rows (by the callable passed in, the project's own trainer in the pipeline),
its temperature fitted on their validation rows (calibration.fit_temperature), the scorers
fitted on their training rows, a threshold chosen per score on their validation rows; then the
known classes' evaluation rows (``evaluate_on``, normally the test split) are scored against
every row of the held-out classes (all splits: none of them was used for anything). Besides the
three metrics, the effect on the community composition of the evaluated images is measured as
the Bray-Curtis dissimilarity between the true and the predicted class proportions, where the
held-out images' true class is ``unknown``: without rejection (every image forced into a known
class, so the unknown share is always missed) and with rejection at the validation threshold
(a rejected image is counted as ``unknown``).

Pooled intervals over repeats: a two-level bootstrap. Each draw resamples the repeats (which
classes were held out, usually the larger source of variation) and, within each drawn repeat,
its known and unknown images; the statistic is the mean over the drawn repeats. The point
estimate is the mean over repeats. Each repeat's head, scorers and validation thresholds stay
as fitted (refitting them per draw would multiply the cost by the number of draws), so the
intervals leave out the variation of the thresholds themselves.

Default score (:func:`choose_default_score`): chosen without the test split, by the highest
mean AUROC of a leave-classes-out run evaluated on the validation split
(``evaluate_on="val"``: known classes' validation rows against the held-out classes' training
and validation rows). Those validation rows also stop the head's training and fit its
temperature, which can flatter every score a little, but alike, and AUROC needs no threshold.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.linalg import solve_triangular
from scipy.special import logsumexp, softmax
from scipy.stats import rankdata

from plankton_transfer.evaluation.calibration import fit_temperature
from plankton_transfer.evaluation.intervals import central_interval
from plankton_transfer.params.openset import UNKNOWN_SCORES

SCORES = UNKNOWN_SCORES  # params/openset.py: the names params.yaml accepts
HEAD_SCORES = ("msp", "energy")  # computable from the head alone (Scorers.from_head); the others need training features
METRICS = ("auroc", "fpr95", "aupr")
HIGHER_IS_BETTER = {"auroc": True, "aupr": True, "fpr95": False}
CHUNK_ROWS = 4096  # rows converted to float64 at once when scoring

TrainHead = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def vim_dimension(n_features: int, rank: int) -> int:
    """ViM's principal-subspace dimension: the paper's rule (1000 from 2048 dimensions, 512 from
    768, else half), capped at half the rank of the shifted training features (0 when rank < 2:
    the residual is then the whole shifted feature)."""
    if n_features >= 2048:
        paper = 1000
    elif n_features >= 768:
        paper = 512
    else:
        paper = n_features // 2
    return int(min(paper, rank // 2))


def _as64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _chunks(n: int):
    for start in range(0, n, CHUNK_ROWS):
        yield slice(start, min(n, start + CHUNK_ROWS))


def _principal_basis(shifted: np.ndarray) -> np.ndarray:
    """Orthonormal (D, k) basis of ViM's principal subspace: the top k right singular vectors of
    ``shifted`` (N, D), k from :func:`vim_dimension`. From the eigenvectors of the smaller Gram
    matrix (N x N or D x D), several times faster than an SVD of the (N, D) matrix."""
    n, d = shifted.shape
    rows = n <= d
    eigval, eigvec = np.linalg.eigh(shifted @ shifted.T if rows else shifted.T @ shifted)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    tol = max(float(eigval[0]), 0.0) * max(n, d) * np.finfo(float).eps  # on squared singular values
    k = vim_dimension(d, int((eigval > tol).sum()))
    if not rows:
        return np.ascontiguousarray(eigvec[:, :k])
    return np.ascontiguousarray(shifted.T @ (eigvec[:, :k] / np.sqrt(eigval[:k])))


def ledoit_wolf(centered: np.ndarray) -> tuple[np.ndarray, float]:
    """The Ledoit-Wolf shrinkage covariance of rows already centred, and its shrinkage: scikit-learn's
    ``LedoitWolf(assume_centered=True)``, formula for formula (Ledoit & Wolf 2004, "A well-conditioned
    estimator for large-dimensional covariance matrices"), but its two sums computed in O(N D)
    and from the one D x D product the covariance needs anyway: scikit-learn's blocked loop over
    D x D products took 52 s for 1500 rows of 4096 dimensions on this project's 2 cores, this 1 s."""
    n, p = centered.shape
    covariance = centered.T @ centered / n  # the empirical covariance
    trace = float(np.trace(covariance))
    mu = trace / p
    if p == 1:
        return covariance, 0.0
    beta_ = float((((centered * centered).sum(axis=1)) ** 2).sum())  # sum of <X2.T, X2>
    delta_ = float((covariance * covariance).sum())  # sum of <X.T, X> ** 2 / n ** 2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace + p * mu ** 2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    covariance *= 1.0 - shrinkage
    covariance.flat[:: p + 1] += shrinkage * mu
    return covariance, float(shrinkage)


@dataclasses.dataclass
class Scorers:
    """Everything the four scores need, fitted once on the training features (see module docstring)."""
    weight: np.ndarray  # (C, D) head weights
    bias: np.ndarray  # (C,)
    temperature: float
    class_means: np.ndarray  # (C, D) training class means (Mahalanobis)
    covariance_factor: np.ndarray  # (D, D) lower Cholesky factor of the shared shrinkage covariance
    shrinkage: float  # Ledoit-Wolf's shrinkage coefficient (0: sample covariance, 1: scaled identity)
    vim_origin: np.ndarray  # (D,) u = -pinv(W) b
    vim_basis: np.ndarray  # (D, k) orthonormal basis of the principal subspace
    vim_alpha: float

    @classmethod
    def from_head(cls, head_weight: np.ndarray, head_bias: np.ndarray, temperature: float = 1.0) -> Scorers:
        """The scores a model file alone supports, ``msp`` and ``energy`` (HEAD_SCORES): no
        training features, so ``mahalanobis`` and ``vim`` are refused by :meth:`score`."""
        weight, bias = _as64(head_weight), _as64(head_bias)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        dim = weight.shape[1]
        return cls(weight=weight, bias=bias, temperature=float(temperature), class_means=np.zeros((0, dim)),
                   covariance_factor=np.zeros((0, 0)), shrinkage=math.nan, vim_origin=np.zeros(0),
                   vim_basis=np.zeros((dim, 0)), vim_alpha=math.nan)

    def supports(self, name: str) -> bool:
        """Whether score ``name`` can be computed: msp and energy always; mahalanobis and vim
        once fitted on training features (fit_unknown_scorers, or a detector that stores them)."""
        return (name in HEAD_SCORES or (name == "mahalanobis" and len(self.class_means) > 0)
                or (name == "vim" and len(self.vim_origin) > 0))

    @property
    def vim_dimension(self) -> int:
        return int(self.vim_basis.shape[1])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return _as64(x) @ self.weight.T + self.bias

    def score(self, name: str, x: np.ndarray) -> np.ndarray:
        """(N,) unknown-ness of the feature rows ``x`` (N, D) by score ``name`` (one of SCORES)."""
        method = {"msp": self._msp, "energy": self._energy, "mahalanobis": self._mahalanobis,
                  "vim": self._vim}.get(name)
        if method is None:
            raise ValueError(f"unknown score {name!r}; choose from {', '.join(SCORES)}")
        if not self.supports(name):
            raise ValueError(f"score {name!r} needs the model's training features (fit_unknown_scorers); "
                             f"from the head alone: {', '.join(HEAD_SCORES)}")
        x = np.asarray(x)
        out = np.empty(len(x))
        for rows in _chunks(len(x)):
            out[rows] = method(_as64(x[rows]))
        return out

    def scores(self, x: np.ndarray, names: Sequence[str] = SCORES) -> dict[str, np.ndarray]:
        return {name: self.score(name, x) for name in names}

    def _msp(self, x: np.ndarray) -> np.ndarray:
        return 1.0 - softmax(self.logits(x) / self.temperature, axis=1).max(axis=1)

    def _energy(self, x: np.ndarray) -> np.ndarray:
        return -self.temperature * logsumexp(self.logits(x) / self.temperature, axis=1)

    def _mahalanobis(self, x: np.ndarray) -> np.ndarray:
        factor = self.covariance_factor
        z = solve_triangular(factor, x.T, lower=True, check_finite=False).T  # whitened rows
        m = solve_triangular(factor, self.class_means.T, lower=True, check_finite=False).T
        d2 = (z * z).sum(axis=1)[:, None] - 2 * z @ m.T + (m * m).sum(axis=1)[None, :]
        return np.sqrt(np.clip(d2.min(axis=1), 0, None))

    def _residual_norm(self, x: np.ndarray) -> np.ndarray:
        shifted = x - self.vim_origin
        inside = shifted @ self.vim_basis
        return np.sqrt(np.clip((shifted * shifted).sum(axis=1) - (inside * inside).sum(axis=1), 0, None))

    def _vim(self, x: np.ndarray) -> np.ndarray:
        return self.vim_alpha * self._residual_norm(x) - logsumexp(self.logits(x), axis=1)


def fit_unknown_scorers(train_x: np.ndarray, train_y: np.ndarray, head_weight: np.ndarray, head_bias: np.ndarray,
                        temperature: float = 1.0) -> Scorers:
    """Fit the four scores on the training features (N, D) and labels 0..C-1 of a trained head
    (``head_weight`` (C, D), ``head_bias`` (C,)) with its fitted temperature. Every class of the
    head needs at least one training row (its Mahalanobis mean)."""
    x = _as64(train_x)
    y = np.asarray(train_y, dtype=int)
    weight, bias = _as64(head_weight), _as64(head_bias)
    n_classes, dim = weight.shape
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"train_x has shape {x.shape}; the head expects {dim} features")
    counts = np.bincount(y, minlength=n_classes)
    if len(counts) > n_classes or (counts == 0).any():
        raise ValueError(f"every head class needs training rows; counts per class: {counts.tolist()}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")

    means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    covariance, shrinkage = ledoit_wolf(x - means[y])
    try:
        factor = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:  # shrinkage 0 and a constant feature: a ridge of 1e-9 of the mean variance
        ridge = 1e-9 * max(float(np.trace(covariance)) / dim, np.finfo(float).tiny)
        factor = np.linalg.cholesky(covariance + ridge * np.eye(dim))

    del covariance
    origin = -np.linalg.pinv(weight) @ bias
    scorers = Scorers(weight=weight, bias=bias, temperature=float(temperature), class_means=means,
                      covariance_factor=factor, shrinkage=shrinkage, vim_origin=origin,
                      vim_basis=_principal_basis(x - origin), vim_alpha=1.0)
    residual = np.concatenate([scorers._residual_norm(x[rows]) for rows in _chunks(len(x))])
    max_logit = np.concatenate([scorers.logits(x[rows]).max(axis=1) for rows in _chunks(len(x))])
    if not residual.mean() > 0:
        raise ValueError("ViM: the training features have no residual outside the principal subspace")
    scorers.vim_alpha = float(max_logit.mean() / residual.mean())
    return scorers


# ----------------------------------------------------------------------------------------------
# thresholds and metrics


def known_threshold(known_scores: np.ndarray, target_known_kept: float = 0.95) -> float:
    """The smallest score t with at least ``target_known_kept`` of ``known_scores`` <= t (the
    images kept as known); an image scoring above t is rejected as unknown."""
    if not 0 < target_known_kept <= 1:
        raise ValueError(f"target_known_kept must be in (0, 1], got {target_known_kept}")
    s = np.sort(np.asarray(known_scores, dtype=float))
    if len(s) == 0:
        raise ValueError("no known scores to choose a threshold from")
    k = max(1, math.ceil(target_known_kept * len(s) - 1e-9))  # rows kept; 1e-9: 0.95 * 100 is 95.000...01
    return float(s[k - 1])


def auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, ``truth`` 1 for the positives: the Mann-Whitney statistic with
    tied scores counted half (equal to scikit-learn's ``roc_auc_score``; tests/test_openset.py
    checks it). Written out because the bootstrap calls it tens of thousands of times, where
    scikit-learn's input validation costs 100 times the arithmetic."""
    ranks = rankdata(scores)
    positives = truth.astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, the step-wise area under the precision-recall curve at each distinct
    score (equal to scikit-learn's ``average_precision_score``, checked in the tests; written out
    for the same reason as :func:`auroc`)."""
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each run of equal scores
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def unknown_metrics(known_scores: np.ndarray, unknown_scores: np.ndarray,
                    target_known_kept: float = 0.95) -> dict[str, float]:
    """AUROC, FPR at ``target_known_kept`` (95 %) of the known images kept (``fpr95``), and AUPR,
    with the unknown images as the positive class."""
    known, unknown = np.asarray(known_scores, float), np.asarray(unknown_scores, float)
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError(f"need known and unknown scores, got {len(known)} and {len(unknown)}")
    truth = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    scores = np.r_[known, unknown]
    threshold = known_threshold(known, target_known_kept)
    return {"auroc": auroc(truth, scores), "fpr95": float((unknown <= threshold).mean()),
            "aupr": average_precision(truth, scores)}


def metric_intervals(known_scores: np.ndarray, unknown_scores: np.ndarray, n_boot: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """:func:`unknown_metrics` with ``<metric>_lo``/``_hi``: a seeded percentile bootstrap, known and
    unknown images resampled separately (the interval widened to contain the observed value)."""
    known, unknown = np.asarray(known_scores, float), np.asarray(unknown_scores, float)
    observed = unknown_metrics(known, unknown)
    draws = {name: np.empty(n_boot) for name in METRICS}
    rng = np.random.default_rng(seed)
    for b in range(n_boot):
        m = unknown_metrics(known[rng.integers(0, len(known), len(known))],
                            unknown[rng.integers(0, len(unknown), len(unknown))])
        for name in METRICS:
            draws[name][b] = m[name]
    out = dict(observed)
    for name in METRICS:
        out[f"{name}_lo"], out[f"{name}_hi"] = central_interval(draws[name], confidence, observed[name])
    return out


def composition(labels: np.ndarray, n_categories: int) -> np.ndarray:
    """Proportions of each category 0..n_categories-1 among ``labels`` (zeros when empty)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_categories).astype(float)
    return counts / counts.sum() if counts.sum() > 0 else counts


def bray_curtis(a: np.ndarray, b: np.ndarray) -> float:
    """Bray-Curtis dissimilarity sum|a - b| / sum(a + b) of two compositions (proportions or
    counts); 0 for identical ones, 1 for ones with nothing in common, 0 when both are empty."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    total = (a + b).sum()
    return float(np.abs(a - b).sum() / total) if total > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# leave-classes-out


@dataclasses.dataclass
class LeaveClassesOut:
    """One row per score (``table``: metrics pooled over repeats, with intervals), one row per
    repeat and score (``repeats``), and the settings the run used."""
    table: pd.DataFrame
    repeats: pd.DataFrame
    evaluated_on: str
    settings: dict


def holdout_sets(classes: Sequence[int], n_holdout: int, repeats: int, seed: int) -> list[list[int]]:
    """``repeats`` sets of ``n_holdout`` classes: consecutive draws from seeded permutations of
    ``classes``, so every class is held out about equally often (a class that would repeat
    within a set is skipped)."""
    classes = list(classes)
    if not 1 <= n_holdout <= len(classes):
        raise ValueError(f"cannot hold out {n_holdout} of {len(classes)} classes")
    rng = np.random.default_rng(seed)
    pool: list[int] = []
    sets = []
    for _ in range(repeats):
        chosen: list[int] = []
        while len(chosen) < n_holdout:
            if not pool:
                pool = [int(c) for c in rng.permutation(classes)]
            c = pool.pop(0)
            if c not in chosen:
                chosen.append(c)
        sets.append(sorted(chosen))
    return sets


@dataclasses.dataclass
class _Repeat:
    held_out: list[int]
    known_classes: list[int]
    temperature: float
    thresholds: dict[str, float]
    known_scores: dict[str, np.ndarray]  # evaluated known rows
    unknown_scores: dict[str, np.ndarray]  # held-out rows
    known_true: np.ndarray  # 0..K-1
    known_pred: np.ndarray
    unknown_pred: np.ndarray

    def stats(self, ki: np.ndarray, ui: np.ndarray, names: Sequence[str], target: float) -> dict[str, float]:
        """Every pooled statistic on the known rows ``ki`` and unknown rows ``ui`` (indices)."""
        k = len(self.known_classes)
        truth = np.r_[self.known_true[ki], np.full(len(ui), k)]
        forced = np.r_[self.known_pred[ki], self.unknown_pred[ui]]
        true_comp = composition(truth, k + 1)
        out = {"bray_curtis_forced": bray_curtis(true_comp, composition(forced, k + 1))}
        for name in names:
            ks, us = self.known_scores[name][ki], self.unknown_scores[name][ui]
            for metric, value in unknown_metrics(ks, us, target).items():
                out[f"{name}/{metric}"] = value
            t = self.thresholds[name]
            rejected = np.where(np.r_[ks, us] > t, k, forced)
            out[f"{name}/bray_curtis_rejected"] = bray_curtis(true_comp, composition(rejected, k + 1))
            out[f"{name}/known_kept"] = float((ks <= t).mean())
            out[f"{name}/unknown_rejected"] = float((us > t).mean())
        return out


def _fit_repeat(x: np.ndarray, y: np.ndarray, split: np.ndarray, held_out: list[int], train_head: TrainHead,
                evaluate_on: str, names: Sequence[str], target: float, heads: dict | None = None) -> _Repeat:
    is_held = np.isin(y, held_out)
    known_classes = sorted(set(np.unique(y[(split == "train") & ~is_held]).tolist()))
    code = np.full(int(y.max()) + 1, -1)
    code[known_classes] = np.arange(len(known_classes))
    known = np.isin(y, known_classes)
    tr, va = known & (split == "train"), known & (split == "val")
    if not va.any():
        raise ValueError(f"no validation rows of the known classes (held out: {held_out}) to fit the "
                         "temperature and choose the thresholds")
    key = tuple(held_out)
    val_x = np.asarray(x[va])
    if heads is not None and key in heads:  # the same classes held out: the same training rows, head and scorers
        temperature, scorers = heads[key]
    else:
        weight, bias = train_head(np.asarray(x[tr]), code[y[tr]], val_x, code[y[va]])
        weight, bias = _as64(weight), _as64(bias)
        if weight.shape != (len(known_classes), x.shape[1]):
            raise ValueError(f"train_head returned weights of shape {weight.shape}; expected "
                             f"{(len(known_classes), x.shape[1])}")
        temperature = fit_temperature(_as64(val_x) @ weight.T + bias, code[y[va]])["temperature"]
        scorers = fit_unknown_scorers(np.asarray(x[tr]), code[y[tr]], weight, bias, temperature)
        if heads is not None:
            heads[key] = (temperature, scorers)
    thresholds = {name: known_threshold(scorers.score(name, val_x), target) for name in names}
    unknown_splits = ("train", "val", "test") if evaluate_on == "test" else ("train", "val")
    ev_known = known & (split == evaluate_on)
    ev_unknown = is_held & np.isin(split, unknown_splits)
    if not ev_known.any() or not ev_unknown.any():
        raise ValueError(f"held out {held_out}: {int(ev_known.sum())} known {evaluate_on} rows and "
                         f"{int(ev_unknown.sum())} held-out rows; both are needed")
    xk, xu = np.asarray(x[ev_known]), np.asarray(x[ev_unknown])
    return _Repeat(held_out=held_out, known_classes=known_classes, temperature=float(temperature),
                   thresholds=thresholds, known_scores=scorers.scores(xk, names),
                   unknown_scores=scorers.scores(xu, names), known_true=code[y[ev_known]],
                   known_pred=scorers.logits(xk).argmax(axis=1), unknown_pred=scorers.logits(xu).argmax(axis=1))


def leave_classes_out(features: np.ndarray, labels: np.ndarray, split: np.ndarray, train_head: TrainHead, *,
                      n_holdout: int, repeats: int = 5, seed: int = 0, target_known_kept: float = 0.95,
                      evaluate_on: str = "test", scores: Sequence[str] = SCORES, n_boot: int = 1000,
                      confidence: float = 0.95, class_names: Sequence[str] | None = None,
                      heads: dict | None = None) -> LeaveClassesOut:
    """The leave-classes-out protocol of the module docstring.

    ``features`` (N, D) (a float16 memory map is fine: rows are taken per use), ``labels`` (N,)
    class ids 0..C-1, ``split`` (N,) "train"/"val"/"test" for every row. ``train_head(x_train,
    y_train, x_val, y_val) -> (weight (K, D), bias (K,))`` trains a head on the known classes,
    relabelled 0..K-1 in increasing order of their original ids. ``evaluate_on``: "test" (the
    report) or "val" (what :func:`choose_default_score` needs; the test split is then never
    read). A known class without training rows in a repeat is left out of that repeat.
    ``heads``: a dict shared between calls with the same data and seed (the validation run and the
    test run), so each held-out set's head is trained and its scorers fitted once.
    """
    if evaluate_on not in ("test", "val"):
        raise ValueError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}")
    unknown_names = [s for s in scores if s not in SCORES]
    if unknown_names:
        raise ValueError(f"unknown scores {unknown_names}; choose from {', '.join(SCORES)}")
    y = np.asarray(labels, dtype=int)
    split = np.asarray(split).astype(str)
    if not (len(y) == len(split) == len(features)):
        raise ValueError("features, labels and split must have one entry per row")
    present = np.unique(y[np.isin(split, ("train", "val", "test") if evaluate_on == "test" else ("train", "val"))])
    if n_holdout > len(present) - 2:
        raise ValueError(f"holding out {n_holdout} of {len(present)} classes leaves fewer than 2 known classes")
    sets = holdout_sets(present, n_holdout, repeats, seed)
    fitted = [_fit_repeat(features, y, split, held, train_head, evaluate_on, scores, target_known_kept, heads)
              for held in sets]
    observed = [r.stats(np.arange(len(r.known_true)), np.arange(len(r.unknown_pred)), scores, target_known_kept)
                for r in fitted]
    keys = list(observed[0])

    rng = np.random.default_rng(seed)
    draws = np.empty((n_boot, len(keys)))
    for b in range(n_boot):
        chosen = rng.integers(0, len(fitted), len(fitted)) if len(fitted) > 1 else [0]
        rows = []
        for i in chosen:
            r = fitted[i]
            rows.append([*r.stats(rng.integers(0, len(r.known_true), len(r.known_true)),
                                  rng.integers(0, len(r.unknown_pred), len(r.unknown_pred)),
                                  scores, target_known_kept).values()])
        draws[b] = np.mean(rows, axis=0)
    mean = {key: float(np.mean([o[key] for o in observed])) for key in keys}
    interval = {key: central_interval(draws[:, j], confidence, mean[key]) for j, key in enumerate(keys)}

    table_rows = []
    for name in scores:
        row = {"score": name}
        for metric in (*METRICS, "bray_curtis_rejected", "known_kept", "unknown_rejected"):
            key = f"{name}/{metric}"
            row[metric], (row[f"{metric}_lo"], row[f"{metric}_hi"]) = mean[key], interval[key]
        row["bray_curtis_forced"] = mean["bray_curtis_forced"]
        row["bray_curtis_forced_lo"], row["bray_curtis_forced_hi"] = interval["bray_curtis_forced"]
        table_rows.append(row)

    name_of = (lambda c: str(class_names[c])) if class_names is not None else str
    repeat_rows = []
    for i, (r, o) in enumerate(zip(fitted, observed)):
        for name in scores:
            repeat_rows.append({
                "repeat": i, "held_out": ";".join(name_of(c) for c in r.held_out), "score": name,
                "known_images": len(r.known_true), "unknown_images": len(r.unknown_pred),
                "temperature": r.temperature, "threshold": r.thresholds[name],
                **{m: o[f"{name}/{m}"] for m in (*METRICS, "bray_curtis_rejected", "known_kept", "unknown_rejected")},
                "bray_curtis_forced": o["bray_curtis_forced"]})
    settings = {"n_holdout": n_holdout, "repeats": repeats, "seed": seed, "target_known_kept": target_known_kept,
                "evaluate_on": evaluate_on, "n_boot": n_boot, "confidence": confidence,
                "held_out": [[name_of(c) for c in r.held_out] for r in fitted]}
    return LeaveClassesOut(table=pd.DataFrame(table_rows), repeats=pd.DataFrame(repeat_rows),
                           evaluated_on=evaluate_on, settings=settings)


def choose_default_score(result: LeaveClassesOut, criterion: str = "auroc") -> str:
    """The score with the best mean ``criterion`` (auroc, aupr: highest; fpr95: lowest) in a
    leave-classes-out run evaluated on the validation split (``evaluate_on="val"``); a run that
    read the test split is refused. Ties go to the earlier score in SCORES order."""
    if result.evaluated_on != "val":
        raise ValueError("choose the default score on a leave-classes-out run with evaluate_on='val'; "
                         "this one was evaluated on the test split")
    if criterion not in HIGHER_IS_BETTER:
        raise ValueError(f"criterion must be one of {', '.join(HIGHER_IS_BETTER)}, got {criterion!r}")
    values = result.table.set_index("score")[criterion]
    order = sorted(values.index, key=lambda s: SCORES.index(s))
    sign = 1 if HIGHER_IS_BETTER[criterion] else -1
    return max(order, key=lambda s: (sign * values[s], -order.index(s)))
