"""Which unlabelled images to label next: pure numpy selection strategies.

Every strategy picks ``n`` images of a pool of ``N`` and returns their pool indices, best
first, with the strategy's value of each picked image (for a column beside the picks):

=================  ==============================================  ===============================
strategy           picks                                           value (per picked image)
=================  ==============================================  ===============================
random             a seeded random sample                          its random priority in [0, 1)
least_confidence   the lowest top-1 probability                    1 - top-1 probability
margin             the smallest top-1 minus top-2 probability      top-1 - top-2 probability
                   ("breaking ties", Luo et al. 2005)
entropy            the highest entropy of the probabilities        entropy in nats
kcenter            k-center greedy on the features from the        distance to the nearest labelled
                   labelled set (Sener & Savarese 2018)            or already picked image
cluster            k-means of the pool into ``n`` clusters, the    distance to its cluster's centre
                   image nearest each centre (cluster-then-pick)
unknown_first      the highest external unknown score              the unknown score
=================  ==============================================  ===============================

``proba`` are the model's calibrated class probabilities of the pool (N x C), ``features``
its features (N x D, any float dtype, float16 included) and ``labelled_features`` those of
the images already labelled (L x D). Distances are Euclidean, in float64.

Ties are broken the same way every time: among equal values the image with the lower pool
index comes first (stable sorts; k-center's arg-max takes the first maximum). Bad input
raises :class:`ValueError` with a one-line message for the caller to print.
"""
from __future__ import annotations

import numpy as np

UNCERTAINTY = ("least_confidence", "margin", "entropy")
DIVERSITY = ("kcenter", "cluster")
STRATEGIES = ("random", *UNCERTAINTY, *DIVERSITY, "unknown_first")
KMEANS_ITERATIONS = 50
DISTANCE_CHUNK = 4096  # pool rows per block of pairwise distances (memory: chunk x labelled x 8 bytes)


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def check_n(n: object, pool: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n (images to pick) must be a whole number, got {n!r}")
    if n < 1:
        raise ValueError(f"n (images to pick) must be at least 1, got {n}")
    if n > pool:
        raise ValueError(f"n is {n} but the pool holds only {pool} unlabelled images")
    return int(n)


def check_proba(proba: object) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba must be an (images x classes) array with at least 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0:
        raise ValueError("proba holds negative, NaN or infinite values; pass probabilities (softmax output)")
    sums = p.sum(axis=1)
    if len(p) and np.abs(sums - 1).max() > 1e-3:
        worst = int(np.abs(sums - 1).argmax())
        raise ValueError(f"proba rows must sum to 1; row {worst} sums to {sums[worst]:.4g} (pass softmax output, "
                         "not logits)")
    return p


def check_features(features: object, name: str) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (images x dimensions) array, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def descending(values: np.ndarray) -> np.ndarray:
    """Indices from the highest value to the lowest; equal values keep the lower index first."""
    return np.lexsort((np.arange(len(values)), -values))


def ascending(values: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(len(values)), values))


def least_confidence(proba: np.ndarray) -> np.ndarray:
    """1 - top-1 probability, per image (higher: less confident)."""
    return 1.0 - check_proba(proba).max(axis=1)


def margin(proba: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability, per image (lower: nearer a decision boundary)."""
    top2 = np.sort(check_proba(proba), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats, per image (0 log 0 = 0)."""
    p = check_proba(proba)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.maximum(-terms.sum(axis=1), 0.0)


def min_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``x`` to its nearest row of ``centres`` (inf: none)."""
    out = np.full(len(x), np.inf)
    if len(centres) == 0:
        return out
    c2 = (centres ** 2).sum(axis=1)
    for start in range(0, len(x), DISTANCE_CHUNK):
        block = x[start:start + DISTANCE_CHUNK]
        d2 = (block ** 2).sum(axis=1)[:, None] - 2 * block @ centres.T + c2[None, :]
        out[start:start + DISTANCE_CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def kcenter_greedy(features: np.ndarray, n: int, labelled_features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sener & Savarese's greedy k-center: repeatedly the pool image farthest from every
    labelled and already picked image. Without labelled images the first pick is the image
    nearest the pool's mean (its value: that distance)."""
    x = check_features(features, "features")
    n = check_n(n, len(x))
    if labelled_features is not None and np.asarray(labelled_features).size:
        labelled = check_features(labelled_features, "labelled_features")
        if labelled.shape[1] != x.shape[1]:
            raise ValueError(f"labelled_features have {labelled.shape[1]} dimensions, the pool's features {x.shape[1]}")
        nearest = min_distances(x, labelled)
    else:
        nearest = np.full(len(x), np.inf)
    picked, values = [], []
    if np.isinf(nearest).all():
        first = int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))
        picked.append(first)
        values.append(float(np.linalg.norm(x[first] - x.mean(axis=0))))
        nearest = np.minimum(nearest, np.linalg.norm(x - x[first], axis=1))
    while len(picked) < n:
        nearest[picked] = -1.0  # never picked twice, even when duplicates leave distances of 0
        i = int(np.argmax(nearest))  # the first maximum: the lower index on ties
        picked.append(i)
        values.append(float(nearest[i]))
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
    return np.asarray(picked, dtype=np.int64), np.asarray(values)


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): indices of ``k`` distinct rows."""
    chosen = [int(rng.integers(len(x)))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < k:
        total = d2.sum()
        if total <= 0:  # fewer distinct rows than k: take the lowest unpicked indices
            rest = np.setdiff1d(np.arange(len(x)), chosen)[:k - len(chosen)]
            chosen.extend(int(i) for i in rest)
            break
        i = int(rng.choice(len(x), p=d2 / total))
        chosen.append(i)
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    return np.asarray(chosen)


def cluster_then_pick(features: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means (seeded k-means++, Lloyd's iterations) of the pool into ``n`` clusters; from each
    cluster the image nearest its centre, the largest clusters first."""
    x = check_features(features, "features")
    n = check_n(n, len(x))
    rng = np.random.default_rng(seed)
    centres = x[kmeans_pp_init(x, n, rng)].copy()
    assign = np.full(len(x), -1)
    for _ in range(KMEANS_ITERATIONS):
        d2 = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None, :]
        new = d2.argmin(axis=1)
        for k in np.setdiff1d(np.arange(n), new):  # an empty cluster takes the image farthest from its centre
            far = int(np.argmax(d2[np.arange(len(x)), new]))
            new[far] = k
            d2[far, k] = -np.inf
        if np.array_equal(new, assign):
            break
        assign = new
        for k in range(n):
            if (assign == k).any():
                centres[k] = x[assign == k].mean(axis=0)
    sizes = np.bincount(assign, minlength=n)
    picked, values = [], []
    for k in descending(sizes.astype(np.float64)):
        members = np.flatnonzero(assign == k)
        if len(members) == 0:  # only with duplicate rows; filled below
            continue
        dist = np.linalg.norm(x[members] - centres[k], axis=1)
        j = int(ascending(dist)[0])
        picked.append(int(members[j]))
        values.append(float(dist[j]))
    rest = np.setdiff1d(np.arange(len(x)), picked)[:n - len(picked)]
    picked.extend(int(i) for i in rest)
    values.extend(float(v) for v in min_distances(x[rest], centres))
    return np.asarray(picked, dtype=np.int64), np.asarray(values)


def top(values: np.ndarray, n: int, highest: bool) -> tuple[np.ndarray, np.ndarray]:
    order = (descending if highest else ascending)(values)[:n]
    return order.astype(np.int64), values[order]


def pool_size(proba, features, unknown_score) -> int:
    sizes = {name: len(a) for name, a in (("proba", proba), ("features", features), ("unknown_score", unknown_score))
             if a is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError("the pool's arrays disagree on its size: "
                         + ", ".join(f"{name} has {size} rows" for name, size in sizes.items()))
    return next(iter(sizes.values()), 0)


def select(strategy: str, n: int, proba=None, features=None, labelled_features=None, unknown_score=None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` pool images ``strategy`` would label next: (pool indices, their values), best first.

    Which inputs each strategy needs: uncertainty strategies ``proba``; ``kcenter`` and
    ``cluster`` ``features`` (``kcenter`` also ``labelled_features``, when any are labelled);
    ``unknown_first`` ``unknown_score`` (higher: more unknown); ``random`` any one of them (for
    the pool's size). See the module docstring for each strategy's value.
    """
    check_strategy(strategy)
    needs = {"random": None, "kcenter": "features", "cluster": "features", "unknown_first": "unknown_score",
             **{s: "proba" for s in UNCERTAINTY}}[strategy]
    given = {"proba": proba, "features": features, "unknown_score": unknown_score}
    if needs is not None and given[needs] is None:
        raise ValueError(f"strategy {strategy!r} needs {needs}")
    if all(v is None for v in given.values()):
        raise ValueError("strategy 'random' needs the pool: pass proba, features or unknown_score")
    n = check_n(n, pool_size(proba, features, unknown_score))
    if strategy == "random":
        priority = np.random.default_rng(seed).random(pool_size(proba, features, unknown_score))
        return top(priority, n, highest=True)
    if strategy == "least_confidence":
        return top(least_confidence(proba), n, highest=True)
    if strategy == "margin":
        return top(margin(proba), n, highest=False)
    if strategy == "entropy":
        return top(entropy(proba), n, highest=True)
    if strategy == "kcenter":
        return kcenter_greedy(features, n, labelled_features)
    if strategy == "cluster":
        return cluster_then_pick(features, n, seed)
    score = np.asarray(unknown_score, dtype=np.float64)
    if score.ndim != 1 or not np.all(np.isfinite(score)):
        raise ValueError("unknown_score must be one finite number per pool image")
    return top(score, n, highest=True)
