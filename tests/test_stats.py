"""Intervals, paired tests, calibration and abundance on cases whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, binom
from sklearn import metrics as skm

from plankton_transfer.evaluation.abundance import abundance_comparison, adjusted_proportions, proportion_error
from plankton_transfer.evaluation.calibration import (cross_entropy, expected_calibration_error, fit_temperature,
                                                      reliability_table)
from plankton_transfer.evaluation.intervals import (balanced_accuracy_of, bootstrap_metrics, central_interval,
                                                    confusion_counts, macro_f1_of, metric_intervals,
                                                    posterior_metrics, resample_indices, wilson_interval)
from plankton_transfer.evaluation.paired import compare_pairs, pair_sentence, paired_difference


@pytest.mark.parametrize("correct,n,low,high", [
    (9, 10, 0.5958, 0.9821),   # the sample's 90 % on 10 test images
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), table I
])
def test_wilson_interval_matches_published_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=6e-5)


def test_resamples_repeat_for_a_seed_and_differ_for_another():
    (idx,) = list(resample_indices(15, 50, seed=3))
    assert idx.shape == (50, 15) and idx.min() >= 0 and idx.max() < 15
    assert (np.concatenate(list(resample_indices(15, 50, seed=3))) == idx).all()
    assert not (np.concatenate(list(resample_indices(15, 50, seed=4))) == idx).all()


def test_vectorised_metrics_equal_scikit_learn_on_each_matrix():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, (20, 30)), rng.integers(0, 5, (20, 30))
    y_true[:, 0] = 4  # a class present in every row
    counts = np.stack([confusion_counts(t, p, 5) for t, p in zip(y_true, y_pred)])
    for r in range(20):
        assert balanced_accuracy_of(counts)[r] == pytest.approx(skm.balanced_accuracy_score(y_true[r], y_pred[r]))
        assert macro_f1_of(counts)[r] == pytest.approx(
            skm.f1_score(y_true[r], y_pred[r], labels=range(5), average="macro", zero_division=0))


def test_one_class_gives_exactly_the_jeffreys_interval_of_its_recall():
    """With one class, balanced accuracy is that class's recall, whose posterior is Beta(k + 1/2,
    n - k + 1/2): the draws' interval must be the Jeffreys interval (Brown, Cai & DasGupta 2001)."""
    y_true, y_pred = np.zeros(20, int), np.array([0] * 15 + [1] * 5)
    values = posterior_metrics(y_true, y_pred, 2, n_draws=40000, seed=1)["balanced_accuracy"]
    expected = beta.ppf([0.025, 0.975], 15.5, 5.5)  # 0.5444, 0.9072
    assert central_interval(values, 0.95) == pytest.approx(tuple(expected), abs=0.006)
    assert values.mean() == pytest.approx(15.5 / 21, abs=0.003)


def test_a_class_with_one_test_image_leaves_a_wide_interval_where_a_bootstrap_would_have_none():
    y_true, y_pred = np.arange(6), np.array([5, 5, 5, 5, 5, 5])  # one image per class, one right
    out = metric_intervals(y_true, y_pred, 6, 0.95, 2000, seed=0)
    assert out["balanced_accuracy_lo"] <= 1 / 6 <= out["balanced_accuracy_hi"]
    assert out["balanced_accuracy_hi"] - out["balanced_accuracy_lo"] > 0.3
    assert out["macro_f1_lo"] < out["macro_f1_hi"]


def test_with_many_images_per_class_the_interval_agrees_with_a_stratified_bootstrap():
    rng = np.random.default_rng(4)
    y_true = np.repeat(np.arange(3), 300)
    y_pred = np.where(rng.random(900) < np.repeat([0.9, 0.7, 0.5], 300), y_true, rng.integers(0, 3, 900))
    out = metric_intervals(y_true, y_pred, 3, 0.95, 4000, seed=2)
    boot = []
    for _ in range(1000):  # each class's images resampled within the class
        idx = np.concatenate([rng.choice(np.flatnonzero(y_true == c), 300) for c in range(3)])
        boot.append(np.stack([confusion_counts(y_true[idx], y_pred[idx], 3)]))
    counts = np.concatenate(boot)
    for name, metric in (("balanced_accuracy", balanced_accuracy_of), ("macro_f1", macro_f1_of)):
        low, high = np.quantile(metric(counts), [0.025, 0.975])
        assert out[f"{name}_lo"] == pytest.approx(low, abs=0.012)
        assert out[f"{name}_hi"] == pytest.approx(high, abs=0.012)


def test_the_stratified_bootstrap_of_one_class_is_its_binomial():
    """One class of 20 test images, 15 right: a resample's recall is Binomial(20, 0.75) / 20, so the
    bootstrap's percentile interval is that binomial's quantiles (the known answer)."""
    y_true, y_pred = np.zeros(20, int), np.array([0] * 15 + [1] * 5)
    values = bootstrap_metrics(y_true, y_pred, 2, n_resamples=40000, seed=1)["balanced_accuracy"]
    assert central_interval(values, 0.95) == tuple(binom.ppf([0.025, 0.975], 20, 0.75) / 20)  # 0.55, 0.9
    assert values.mean() == pytest.approx(0.75, abs=0.003)
    out = metric_intervals(y_true, y_pred, 2, 0.95, 4000, seed=1, method="bootstrap")
    assert (out["balanced_accuracy_lo"], out["balanced_accuracy_hi"]) == (0.55, 0.9)
    one_each = metric_intervals(np.arange(6), np.arange(6), 6, 0.95, 500, seed=0, method="bootstrap")
    assert one_each["balanced_accuracy_lo"] == one_each["balanced_accuracy_hi"] == 1.0  # why posterior is the default


def test_a_perfect_classifier_gets_an_interval_ending_at_100_percent():
    y = np.repeat(np.arange(3), 5)
    out = metric_intervals(y, y, 3, 0.95, 500, seed=0)
    assert out["balanced_accuracy_hi"] == out["macro_f1_hi"] == out["accuracy_hi"] == 1.0
    assert 0.5 < out["balanced_accuracy_lo"] < 1.0 and out == metric_intervals(y, y, 3, 0.95, 500, seed=0)


def test_identical_models_have_p_one_and_an_interval_holding_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 40)
    pred = np.where(rng.random(40) < 0.7, y, (y + 1) % 3)
    row = paired_difference(y, pred, pred.copy(), 0.95, 2000, seed=0)
    assert row["mcnemar_p"] == 1.0 and row["difference"] == 0.0
    assert row["difference_lo"] <= 0.0 <= row["difference_hi"]


def test_one_model_right_on_all_30_disagreements_is_significant():
    y = np.repeat(np.arange(3), 20)  # 60 images
    a = y.copy()
    b = y.copy()
    b[::2] = (y[::2] + 1) % 3  # B wrong on 30 images where A is right
    row = paired_difference(y, a, b, 0.95, 2000, seed=0)
    assert (row["only_a_right"], row["only_b_right"]) == (30, 0)
    assert row["mcnemar_p"] < 0.001 and row["mcnemar_p"] == pytest.approx(2 * 0.5 ** 30)
    assert row["difference"] == pytest.approx(0.5) and row["difference_lo"] > 0.3
    (pair,) = compare_pairs(y, {"worse": b, "better": a}, 0.95, 500, seed=0)
    assert (pair["model_a"], pair["model_b"]) == ("better", "worse")  # the more accurate first
    sentence = pair_sentence(pair, 0.95)
    assert sentence.startswith("better vs worse: +50.0 points [") and "McNemar p < 0.001" in sentence


def test_temperature_scaling_never_raises_the_validation_cross_entropy_it_is_fitted_on():
    rng = np.random.default_rng(5)
    cases = []
    for scale in (0.2, 1.0, 5.0, 40.0):  # under-confident ... grossly over-confident
        logits = rng.normal(size=(60, 4)) * scale
        cases.append((logits, logits.argmax(1)))  # every prediction right
        cases.append((logits, rng.integers(0, 4, 60)))  # labels unrelated to the logits
    cases.append((np.zeros((5, 3)), np.array([0, 1, 2, 0, 1])))  # nothing to fit: T stays 1
    for logits, y in cases:
        fitted = fit_temperature(logits, y)
        assert fitted["val_loss_after"] <= fitted["val_loss_before"] + 1e-12
        assert fitted["val_loss_before"] == pytest.approx(cross_entropy(logits, y))
        assert fitted["val_loss_after"] == pytest.approx(cross_entropy(logits, y, fitted["temperature"]))
        assert cross_entropy(logits, y, fitted["temperature"]) <= cross_entropy(logits, y)


def test_temperature_scaling_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(20000, 5)) * 2
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((20000, 1))).argmax(1)  # labels drawn from the calibrated model
    fitted = fit_temperature(3 * true_logits, y)  # a model three times too sure
    assert fitted["temperature"] == pytest.approx(3.0, rel=0.05)


def test_ece_and_reliability_bins_by_hand():
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    table = reliability_table(proba, y, bins=10)
    assert table["images"].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 2, 0]
    assert table.loc[8, "accuracy"] == 0.5 and table.loc[8, "confidence"] == pytest.approx(0.9)
    # bins: 0.6 right (gap 0.4), 0.7 right (gap 0.3), two at 0.9 half right (gap 0.4)
    assert expected_calibration_error(proba, y, bins=10) == pytest.approx((0.4 + 0.3 + 2 * 0.4) / 4)


def test_adjusted_count_recovers_the_true_proportions_exactly():
    rates = np.array([[0.8, 0.1, 0.0], [0.2, 0.9, 0.0], [0.0, 0.0, 1.0]])  # columns: true class
    true = np.array([0.4, 0.2, 0.4])
    assert adjusted_proportions(rates @ true, rates) == pytest.approx(true)
    # the same through the pipeline's function: validation images whose confusion rates are `rates`
    y_val = np.repeat([0, 1, 2], 10)
    pred_val = np.array([0] * 8 + [1] * 2 + [0] * 1 + [1] * 9 + [2] * 10)
    y_test = np.repeat([0, 1, 2], [40, 20, 40])
    pred_test = np.array([0] * 32 + [1] * 8 + [0] * 2 + [1] * 18 + [2] * 40)
    proba_test = np.eye(3)[pred_test]
    table, errors = abundance_comparison(y_val, pred_val, y_test, proba_test, ["a", "b", "c"])
    assert errors["adjusted_count_used"], errors["adjusted_count_reason"]
    assert table["true"].tolist() == [0.4, 0.2, 0.4] and table["classify_count"].tolist() == [0.34, 0.26, 0.4]
    assert table["adjusted_count"].tolist() == pytest.approx([0.4, 0.2, 0.4])
    assert errors["adjusted_count_error"] == pytest.approx(0.0, abs=1e-9)
    assert errors["classify_count_error"] == pytest.approx(0.06)
    assert errors["uniform_error"] == pytest.approx(0.5 * (2 * abs(0.4 - 1 / 3) + abs(0.2 - 1 / 3)))
    assert proportion_error([1, 0], [0, 1]) == 1.0


def test_adjusted_count_is_clipped_and_renormalised():
    rates = np.array([[0.9, 0.5], [0.1, 0.5]])
    estimated = adjusted_proportions(np.array([0.95, 0.05]), rates)  # the solution has a negative part
    assert (estimated >= 0).all() and estimated.sum() == pytest.approx(1.0)
