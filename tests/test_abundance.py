"""Composition estimates with known answers (plankton_transfer/evaluation/abundance.py): adjusted
count and EM recover a known mixture, the baselines' errors by hand, the rule for adjusting,
and per-sample errors grouped correctly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plankton_transfer.evaluation.abundance import (METHODS, abundance_comparison, abundance_estimates,
                                                    adjusted_proportions, adjustment_support,
                                                    confusion_rates, em_proportions, per_sample_abundance,
                                                    prevalence_mae, probabilistic_proportions, proportion_error)

# M[i, j] = P(predicted i | true j); every entry a multiple of 1/10 so that 10 images per class
# reproduce it exactly
RATES = np.array([[0.8, 0.2, 0.1],
                  [0.1, 0.7, 0.2],
                  [0.1, 0.1, 0.7]])
MIXTURE = np.array([0.5, 0.3, 0.2])


def images_with_rates(per_class: np.ndarray, rates: np.ndarray = RATES) -> tuple[np.ndarray, np.ndarray]:
    """per_class[j] images of true class j, predicted exactly in the proportions rates[:, j]."""
    y, pred = [], []
    for j, n in enumerate(per_class):
        for i, rate in enumerate(rates[:, j]):
            k = round(rate * n)
            y += [j] * k
            pred += [i] * k
    return np.array(y), np.array(pred)


def one_hot_ish(pred: np.ndarray, n_classes: int, top: float = 0.7) -> np.ndarray:
    proba = np.full((len(pred), n_classes), (1 - top) / (n_classes - 1))
    proba[np.arange(len(pred)), pred] = top
    return proba


@pytest.fixture
def known_confusion():
    y_val, pred_val = images_with_rates(np.array([10, 10, 10]))
    y_test, pred_test = images_with_rates(np.round(100 * MIXTURE).astype(int))
    return y_val, pred_val, y_test, pred_test


def test_the_fixture_reproduces_the_confusion_rates_and_the_mixture(known_confusion):
    y_val, pred_val, y_test, pred_test = known_confusion
    assert np.allclose(confusion_rates(y_val, pred_val, 3), RATES)
    assert np.allclose(np.bincount(y_test) / len(y_test), MIXTURE)
    assert np.allclose(np.bincount(pred_test) / len(pred_test), RATES @ MIXTURE)  # q = M p: 0.48, 0.30, 0.22


def test_adjusted_count_recovers_the_mixture_that_classify_and_count_misses(known_confusion):
    y_val, pred_val, y_test, pred_test = known_confusion
    estimates, support = abundance_estimates(y_val, pred_val, pred_test, one_hot_ish(pred_test, 3), 3)
    assert support.used and support.reason == "" and support.condition_number < 3
    assert np.allclose(estimates["adjusted_count"], MIXTURE)
    assert np.allclose(estimates["classify_count"], [0.48, 0.30, 0.22])
    assert proportion_error(estimates["classify_count"], MIXTURE) == pytest.approx(0.02)


def test_em_recovers_the_mixture_from_exact_posteriors():
    # one discrete feature x in {0, 1, 2} with P(x | y) = RATES[x, y]; the head's calibrated
    # probabilities are the exact posteriors under a uniform source prior, P(y | x) ~ RATES[x, y]
    posterior = RATES / RATES.sum(axis=1, keepdims=True)
    x = np.repeat([0, 1, 2], np.round(100 * RATES @ MIXTURE).astype(int))  # 48, 30, 22 images
    proba = posterior[x]
    prior, converged = em_proportions(proba, np.full(3, 1 / 3), tol=1e-12)
    assert converged and np.allclose(prior, MIXTURE, atol=1e-6)
    assert not np.allclose(probabilistic_proportions(proba), MIXTURE, atol=0.02)  # what EM corrects
    same, _ = em_proportions(proba * 0 + 1 / 3, np.full(3, 1 / 3))  # uninformative posteriors: the source prior
    assert np.allclose(same, 1 / 3)


def test_em_with_a_zero_in_the_source_prior_still_converges():
    proba = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    prior, converged = em_proportions(proba, np.array([0.5, 0.5, 0.0]))
    assert converged and np.isclose(prior.sum(), 1) and prior[2] < 1e-6


def test_uniform_and_validation_prior_baselines_by_hand():
    y_test = np.array([0] * 5 + [1] * 3 + [2] * 2)  # 0.5, 0.3, 0.2, 0 of 4 classes
    y_val = np.array([0, 1, 1, 3])  # 0.25, 0.5, 0, 0.25
    pred_val = y_val.copy()
    table, summary = abundance_comparison(y_val, pred_val, y_test, one_hot_ish(y_test, 4), list("abcd"))
    # uniform 0.25 each: |0.25| + |0.05| + |0.05| + |0.25| = 0.6
    assert summary["uniform_mae"] == pytest.approx(0.6 / 4) and summary["uniform_error"] == pytest.approx(0.3)
    # validation prior: |0.25| + |0.2| + |0.2| + |0.25| = 0.9
    assert summary["validation_prior_mae"] == pytest.approx(0.9 / 4)
    assert np.allclose(table["uniform"], 0.25) and np.allclose(table["validation_prior"], [0.25, 0.5, 0, 0.25])
    assert prevalence_mae([0.25] * 4, [0.5, 0.3, 0.2, 0]) == pytest.approx(0.15)


def test_adjusting_needs_enough_validation_images_of_the_classes_predicted():
    y_val, pred_val = images_with_rates(np.array([10, 10, 10]))
    few = np.r_[np.flatnonzero(y_val != 2), np.flatnonzero(y_val == 2)[:4]]  # 4 images of class 2 left
    support = adjustment_support(y_val[few], pred_val[few], np.array([0, 1, 2, 2]), 3)
    assert not support.used and support.thin_classes == {2: 4}
    assert "fewer than 10 validation images" in support.reason and "class 2: 4" in support.reason
    # the same validation set is enough when the test predictions never use class 2
    assert adjustment_support(y_val[few], pred_val[few], np.array([0, 1, 1]), 3, max_condition=50).used
    assert adjustment_support(y_val[few], pred_val[few], np.array([0, 1, 2]), 3, min_val_per_class=4,
                              max_condition=50).used


def test_adjusting_needs_a_well_conditioned_confusion_matrix():
    confused = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # classes 0 and 1 indistinguishable
    y_val, pred_val = images_with_rates(np.array([20, 20, 20]), confused)
    support = adjustment_support(y_val, pred_val, np.array([0, 1, 2]), 3)
    assert not support.used and "ill-conditioned" in support.reason and support.condition_number > 1e6
    table, summary = abundance_comparison(y_val, pred_val, np.array([0, 1, 2]), one_hot_ish(np.array([0, 1, 2]), 3),
                                          list("abc"))
    assert table["adjusted_count"].isna().all()
    assert np.isnan(summary["adjusted_count_error"]) and summary["adjusted_count_used"] is False
    assert "ill-conditioned" in summary["adjusted_count_reason"]
    assert all(np.isfinite(summary[f"{m}_mae"]) for m in METHODS if m != "adjusted_count")


def test_per_sample_errors_are_grouped_by_sample():
    ids = np.array(["B", "A", "C", "B", "A", "B", "A", "C", "B", "A"])
    y = np.array([1, 0, 2, 1, 0, 2, 0, 2, 2, 0])
    pred = np.array([1, 0, 0, 1, 0, 1, 0, 2, 1, 0])
    # A: 4 images of class 0, all right; B: true 1, 1, 2, 2 all predicted 1; C: true 2, 2 predicted 0, 2
    y_val, pred_val = np.repeat([0, 1, 2], 10), np.repeat([0, 1, 2], 10)
    result = per_sample_abundance(ids, y, one_hot_ish(pred, 3), y_val, pred_val, 3, n_boot=200, seed=1)
    table = result.per_sample.set_index("sample")
    assert list(table.index) == ["A", "B", "C"] and table["images"].tolist() == [4, 4, 2]
    assert np.allclose(table["classify_count"], [0, (0 + 0.5 + 0.5) / 3, (0.5 + 0 + 0.5) / 3])
    assert np.allclose(table["uniform"], [(2 / 3 + 1 / 3 + 1 / 3) / 3, (1 / 3 + 1 / 6 + 1 / 6) / 3,
                                          (1 / 3 + 1 / 3 + 2 / 3) / 3])
    # the validation set is perfect (M = I), so the adjusted count is the classify-and-count
    assert result.support.used and np.allclose(table["adjusted_count"], table["classify_count"])
    summary = result.summary.set_index("method")
    assert summary.loc["classify_count", "mean_mae"] == pytest.approx(2 / 9)
    assert (summary["mean_mae_lo"] <= summary["mean_mae"]).all() and (summary["mean_mae"] <= summary["mean_mae_hi"]).all()
    cc = summary.loc["classify_count"]  # resampled means lie between the smallest and largest sample's error
    assert 0 <= cc["mean_mae_lo"] < 2 / 9 < cc["mean_mae_hi"] <= 1 / 3 + 1e-12
    again = per_sample_abundance(ids, y, one_hot_ish(pred, 3), y_val, pred_val, 3, n_boot=200, seed=1)
    pd.testing.assert_frame_equal(result.summary, again.summary)


def test_per_sample_reports_an_adjusted_count_not_used_with_its_reason():
    ids = np.array(["s1", "s1", "s2"])
    y, pred = np.array([0, 1, 1]), np.array([0, 1, 1])
    result = per_sample_abundance(ids, y, one_hot_ish(pred, 2), np.array([0, 1]), np.array([0, 1]), 2, n_boot=50)
    summary = result.summary.set_index("method")
    assert not summary.loc["adjusted_count", "used"] and "fewer than 10" in summary.loc["adjusted_count", "reason"]
    assert np.isnan(summary.loc["adjusted_count", "mean_mae"]) and result.per_sample["adjusted_count"].isna().all()
    assert summary.loc["classify_count", "used"] and summary.loc["classify_count", "mean_mae"] == 0
