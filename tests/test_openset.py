"""Unknown-image scores, their metrics and the leave-classes-out protocol, on Gaussian features
whose answers are known (plankton_transfer/evaluation/openset.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp, softmax
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from plankton_transfer.evaluation.openset import (SCORES, LeaveClassesOut, bray_curtis, choose_default_score,
                                                  composition, fit_unknown_scorers, holdout_sets, known_threshold,
                                                  leave_classes_out, ledoit_wolf, metric_intervals,
                                                  unknown_metrics, vim_dimension)

DIM = 16


def class_means(n_classes: int, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, spread, (n_classes, DIM))


def draw(rng: np.random.Generator, means: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(len(means)), per_class)
    return means[y] + rng.normal(0, 1, (len(y), DIM)), y


def logistic_head(x_train, y_train, x_val=None, y_val=None):
    """The test stand-in for the project's trainer: (weight (K, D), bias (K,))."""
    model = LogisticRegression(max_iter=2000, C=1.0).fit(np.asarray(x_train, float), y_train)
    if model.coef_.shape[0] == 1:  # binary: the softmax form of the same model
        return np.vstack([-model.coef_ / 2, model.coef_ / 2]), np.r_[-model.intercept_ / 2, model.intercept_ / 2]
    return model.coef_, model.intercept_


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    means = class_means(4)
    x, y = draw(rng, means, 60)
    weight, bias = logistic_head(x, y)
    return means, x, y, fit_unknown_scorers(x.astype(np.float16), y, weight, bias, temperature=1.5)


def test_far_away_unknowns_get_auroc_near_one_from_mahalanobis_and_vim(fitted):
    means, _, _, scorers = fitted
    rng = np.random.default_rng(2)
    known, _ = draw(rng, means, 100)
    direction = rng.normal(size=DIM)
    far = 40 * direction / np.linalg.norm(direction) + rng.normal(0, 1, (300, DIM))
    for name in ("mahalanobis", "vim"):
        m = unknown_metrics(scorers.score(name, known), scorers.score(name, far))
        assert m["auroc"] > 0.99 and m["aupr"] > 0.99 and m["fpr95"] < 0.02, (name, m)


def test_unknowns_from_the_known_distribution_get_auroc_near_one_half(fitted):
    means, _, _, scorers = fitted
    rng = np.random.default_rng(3)
    known, _ = draw(rng, means, 150)
    same, _ = draw(rng, means, 150)  # "unknowns" drawn from the known classes, same proportions
    for name in SCORES:
        m = unknown_metrics(scorers.score(name, known), scorers.score(name, same))
        assert abs(m["auroc"] - 0.5) < 0.06, (name, m)  # sd of AUROC here is about 0.02
        assert abs(m["fpr95"] - 0.95) < 0.05, (name, m)


def test_msp_and_energy_follow_their_formulas_with_the_temperature(fitted):
    _, x, _, scorers = fitted
    logits = x @ scorers.weight.T + scorers.bias
    t = scorers.temperature
    assert np.allclose(scorers.score("msp", x), 1 - softmax(logits / t, axis=1).max(axis=1))
    assert np.allclose(scorers.score("energy", x), -t * logsumexp(logits / t, axis=1))


def test_mahalanobis_is_the_smallest_distance_under_the_shrunk_shared_covariance(fitted):
    _, x, y, scorers = fitted
    rows = x[:25]
    covariance = scorers.covariance_factor @ scorers.covariance_factor.T
    precision = np.linalg.inv(covariance)
    expected = np.array([min(np.sqrt((r - m) @ precision @ (r - m)) for m in scorers.class_means) for r in rows])
    assert np.allclose(scorers.score("mahalanobis", rows), expected, rtol=1e-6)
    x16 = x.astype(np.float16).astype(float)  # what the scorers were fitted on
    within = LedoitWolf(assume_centered=True).fit(x16 - scorers.class_means[y])
    assert np.allclose(covariance, within.covariance_) and 0 <= scorers.shrinkage <= 1  # 1 here: isotropic noise


@pytest.mark.parametrize("n, p", [(30, 80), (200, 12), (50, 1)])
def test_ledoit_wolf_equals_scikit_learns_estimate(n, p):
    rng = np.random.default_rng(n + p)
    x = rng.normal(size=(n, p)) * rng.uniform(0.1, 3, p) + rng.normal(size=(n, 1))  # uneven, correlated
    covariance, shrinkage = ledoit_wolf(x)
    reference = LedoitWolf(assume_centered=True, block_size=7).fit(x)
    assert np.isclose(shrinkage, reference.shrinkage_) and np.allclose(covariance, reference.covariance_)
    assert p == 1 or 0 < shrinkage < 1


def test_vim_alpha_matches_mean_max_logit_to_mean_residual_on_train(fitted):
    _, x, _, scorers = fitted
    x16 = x.astype(np.float16).astype(float)
    logits = x16 @ scorers.weight.T + scorers.bias
    residual = (scorers.score("vim", x16) + logsumexp(logits, axis=1)) / scorers.vim_alpha
    assert np.isclose(scorers.vim_alpha * residual.mean(), logits.max(axis=1).mean())
    assert scorers.vim_dimension == DIM // 2
    assert np.allclose(scorers.vim_basis.T @ scorers.vim_basis, np.eye(scorers.vim_dimension), atol=1e-8)


def test_vim_dimension_rule_follows_the_paper_and_halves_a_small_span():
    assert vim_dimension(4096, 50_000) == 1000
    assert vim_dimension(2048, 50_000) == 1000
    assert vim_dimension(1280, 50_000) == 512
    assert vim_dimension(512, 50_000) == 256
    assert vim_dimension(4096, 120) == 60  # 120 training images: half their span
    assert vim_dimension(4096, 1) == 0


def test_vim_works_when_there_are_fewer_training_images_than_dimensions():
    rng = np.random.default_rng(4)
    means = np.zeros((3, 200))
    means[np.arange(3), np.arange(3)] = 8
    y = np.repeat(np.arange(3), 10)
    x = means[y] + rng.normal(0, 1, (30, 200))
    weight, bias = logistic_head(x, y)
    scorers = fit_unknown_scorers(x, y, weight, bias)
    assert scorers.vim_dimension == 15 and np.isfinite(scorers.vim_alpha) and scorers.vim_alpha > 0
    assert np.allclose(scorers.vim_basis.T @ scorers.vim_basis, np.eye(15), atol=1e-8)
    shifted = x - scorers.vim_origin  # the basis spans the top right singular vectors
    top = np.linalg.svd(shifted, full_matrices=False)[2][:15]
    assert np.allclose(np.abs(top @ scorers.vim_basis), np.eye(15), atol=1e-6)
    fresh = means[y] + rng.normal(0, 1, (30, 200))
    far = rng.normal(0, 1, (30, 200)) + 25 * np.eye(200)[10]
    assert unknown_metrics(scorers.score("vim", fresh), scorers.score("vim", far))["auroc"] > 0.95


def test_an_unknown_score_name_and_a_class_without_training_rows_are_refused(fitted):
    _, x, y, scorers = fitted
    with pytest.raises(ValueError, match="unknown score"):
        scorers.score("odin", x)
    weight, bias = logistic_head(x, y)
    with pytest.raises(ValueError, match="training rows"):
        fit_unknown_scorers(x[y < 3], y[y < 3], weight, bias)


@pytest.mark.parametrize("n", [1, 7, 20, 100, 200])
def test_the_threshold_keeps_the_target_fraction_of_known_validation_images(n):
    scores = np.random.default_rng(n).normal(size=n)
    for target in (0.5, 0.9, 0.95, 0.99, 1.0):
        t = known_threshold(scores, target)
        kept = (scores <= t).mean()
        assert kept >= target - 1e-12
        assert (scores < t).mean() < target  # the smallest such threshold: one image fewer misses it
    assert known_threshold(np.arange(100.0), 0.95) == 94.0  # keeps exactly 95 of 100


def test_metrics_of_separated_and_of_reversed_scores():
    known, unknown = np.arange(20.0), np.arange(20.0) + 100
    m = unknown_metrics(known, unknown)
    assert m == {"auroc": 1.0, "fpr95": 0.0, "aupr": 1.0}
    m = unknown_metrics(unknown, known)
    assert m["auroc"] == 0.0 and m["fpr95"] == 1.0
    # FPR95 by hand: the threshold keeps 19 of the 20 known (<= 18); unknown at or below it: 3 of 4
    assert unknown_metrics(np.arange(20.0), np.array([0.5, 10.5, 18, 30]))["fpr95"] == 0.75


def test_bootstrap_intervals_are_seeded_and_contain_the_observed_value():
    rng = np.random.default_rng(5)
    known, unknown = rng.normal(0, 1, 80), rng.normal(1.5, 1, 40)
    a = metric_intervals(known, unknown, n_boot=200, seed=7)
    assert a == metric_intervals(known, unknown, n_boot=200, seed=7)
    assert a != metric_intervals(known, unknown, n_boot=200, seed=8)
    for name in ("auroc", "fpr95", "aupr"):
        assert a[f"{name}_lo"] <= a[name] <= a[f"{name}_hi"]
        assert a[f"{name}_hi"] - a[f"{name}_lo"] > 0.01


def test_bray_curtis_of_compositions():
    assert bray_curtis([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert bray_curtis([1, 0], [0, 1]) == 1.0
    assert bray_curtis([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]) == pytest.approx(0.5)
    assert bray_curtis([10, 0], [5, 5]) == pytest.approx(10 / 20)  # counts
    assert np.allclose(composition(np.array([0, 0, 2, 2]), 4), [0.5, 0, 0.5, 0])


def test_holdout_sets_are_seeded_and_hold_every_class_out_equally_often():
    sets = holdout_sets(range(6), 2, 6, seed=3)
    assert sets == holdout_sets(range(6), 2, 6, seed=3)
    assert all(len(set(s)) == 2 for s in sets)
    counts = np.bincount(np.concatenate(sets), minlength=6)
    assert counts.tolist() == [2] * 6
    with pytest.raises(ValueError):
        holdout_sets(range(3), 4, 1, seed=0)


def split_dataset(n_classes: int = 6, seed: int = 6, per_split=(40, 15, 15)):
    rng = np.random.default_rng(seed)
    means = class_means(n_classes, seed, spread=4.0)
    parts = [draw(rng, means, n) for n in per_split]
    x = np.vstack([p[0] for p in parts]).astype(np.float16)
    y = np.concatenate([p[1] for p in parts])
    split = np.concatenate([[name] * len(p[1]) for name, p in zip(("train", "val", "test"), parts)])
    return x, y, split


@pytest.fixture(scope="module")
def protocol():
    x, y, split = split_dataset()
    return x, y, split, leave_classes_out(x, y, split, logistic_head, n_holdout=2, repeats=3, seed=0, n_boot=40,
                                          class_names=[f"taxon{i}" for i in range(6)])


def test_leave_classes_out_finds_held_out_clusters_and_measures_composition(protocol):
    x, y, split, result = protocol
    table = result.table.set_index("score")
    assert list(table.index) == list(SCORES)
    for name in ("mahalanobis", "vim"):
        assert table.loc[name, "auroc"] > 0.95, table.loc[name]
    for col in ("auroc", "fpr95", "aupr", "bray_curtis_rejected", "bray_curtis_forced", "known_kept"):
        assert (table[f"{col}_lo"] <= table[col]).all() and (table[col] <= table[f"{col}_hi"]).all()
    repeats = result.repeats
    assert len(repeats) == 3 * len(SCORES) and repeats["repeat"].nunique() == 3
    assert repeats["held_out"].str.count("taxon").eq(2).all()
    # each repeat: 4 known classes x 15 test images; 2 held-out classes x 70 images from all splits
    assert (repeats["known_images"] == 60).all() and (repeats["unknown_images"] == 140).all()
    # forcing every image into a known class misses the whole unknown share: BC >= 140 / 200
    assert (repeats["bray_curtis_forced"] >= 140 / 200 - 1e-12).all()
    maha = repeats[repeats["score"] == "mahalanobis"]
    assert (maha["bray_curtis_rejected"] < maha["bray_curtis_forced"]).all()
    assert (maha["bray_curtis_rejected"] < 0.15).all()


def test_leave_classes_out_is_reproducible_for_a_seed(protocol):
    x, y, split, result = protocol
    again = leave_classes_out(x, y, split, logistic_head, n_holdout=2, repeats=3, seed=0, n_boot=40,
                              class_names=[f"taxon{i}" for i in range(6)])
    pd.testing.assert_frame_equal(result.table, again.table)


def test_default_score_is_chosen_without_reading_the_test_split():
    x, y, split = split_dataset(seed=8)
    x = x.astype(float)
    x[split == "test"] = np.nan  # any use of a test row would make a metric fail on NaN
    result = leave_classes_out(x, y, split, logistic_head, n_holdout=2, repeats=2, seed=1, n_boot=20,
                               evaluate_on="val")
    assert np.isfinite(result.table[["auroc", "fpr95", "aupr"]].to_numpy()).all()
    assert choose_default_score(result) in SCORES
    with pytest.raises(ValueError, match="evaluate_on='val'"):
        choose_default_score(LeaveClassesOut(result.table, result.repeats, "test", {}))


def test_choose_default_score_takes_the_best_mean_criterion_and_breaks_ties_by_order():
    table = pd.DataFrame({"score": list(SCORES), "auroc": [0.7, 0.9, 0.9, 0.8], "aupr": [0.5, 0.4, 0.6, 0.6],
                          "fpr95": [0.5, 0.3, 0.2, 0.2]})
    result = LeaveClassesOut(table, pd.DataFrame(), "val", {})
    assert choose_default_score(result) == "energy"
    assert choose_default_score(result, "aupr") == "mahalanobis"
    assert choose_default_score(result, "fpr95") == "mahalanobis"
    with pytest.raises(ValueError):
        choose_default_score(result, "accuracy")


def test_the_direct_auroc_and_average_precision_equal_scikit_learns_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from plankton_transfer.evaluation.openset import auroc, average_precision

    rng = np.random.default_rng(5)
    for n in (2, 7, 40, 300):
        truth = np.r_[0, 1, rng.integers(0, 2, n - 2)].astype(float)
        for scores in (rng.normal(size=n), rng.integers(0, 4, n).astype(float)):  # continuous, heavily tied
            assert auroc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
            assert average_precision(truth, scores) == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
