"""Can the probabilities be trusted? Calibration error and temperature scaling.

- expected calibration error (ECE): the test images are put in equal-width bins of confidence
  (the top probability); ECE is the image-weighted mean gap between each bin's accuracy and its
  mean confidence (Guo et al. 2017, "On calibration of modern neural networks", 15 bins);
- temperature scaling (same paper): the logits are divided by one number T > 0 fitted on the
  validation set by minimising its cross-entropy. Predictions (the arg-max) never change; only
  how sure the model says it is. T is kept at 1 unless it lowers the validation cross-entropy,
  so the fit can never make that cross-entropy worse.

  Small validation sets need one safeguard: when every validation image is classified right,
  the cross-entropy keeps falling as T -> 0 and plain minimisation returns a near-one-hot
  model that is badly wrong on the test set. The summed cross-entropy is therefore minimised
  with a weak standard-normal prior on log T (the weight of about one image: a factor e in T
  costs half a nat), which keeps T finite there and is negligible with hundreds of images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond these a head is either constant or one-hot
LOG_TEMPERATURE_PRIOR_SD = 1.0  # the weak prior on log T of the module docstring


def cross_entropy(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)``, in float64."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(y_true)), np.asarray(y_true)].mean())


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """The temperature minimising the cross-entropy of (logits, y_true) (with the weak prior on
    log T), and that cross-entropy before (T = 1) and after; T = 1 when it would not be lower."""
    before = cross_entropy(logits, y_true)
    if len(y_true) == 0:
        return {"temperature": 1.0, "val_loss_before": before, "val_loss_after": before}
    low, high = np.log(TEMPERATURE_BOUNDS)
    n = len(y_true)

    def objective(log_t: float) -> float:  # summed cross-entropy + the prior's penalty
        return n * cross_entropy(logits, y_true, float(np.exp(log_t))) + 0.5 * (log_t / LOG_TEMPERATURE_PRIOR_SD) ** 2

    found = minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    temperature = float(np.exp(found.x))
    after = cross_entropy(logits, y_true, temperature)
    if not after < before:
        temperature, after = 1.0, before
    return {"temperature": temperature, "val_loss_before": before, "val_loss_after": after}


def reliability_table(proba: np.ndarray, y_true: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """One row per confidence bin (lower, upper]: images, mean confidence, accuracy (NaN when empty)."""
    proba, y_true = np.asarray(proba), np.asarray(y_true)
    confidence = proba.max(axis=1) if len(proba) else np.zeros(0)
    correct = (proba.argmax(axis=1) == y_true) if len(proba) else np.zeros(0, bool)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct.astype(float), minlength=bins) / count
    edges = np.arange(bins + 1) / bins
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "images": count,
                         "confidence": mean_confidence, "accuracy": accuracy})


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    table = reliability_table(proba, y_true, bins)
    used = table[table["images"] > 0]
    if used.empty:
        return 0.0
    weights = used["images"] / used["images"].sum()
    return float((weights * (used["accuracy"] - used["confidence"]).abs()).sum())


def calibration_summary(logits: np.ndarray, y_true: np.ndarray, temperature: float, bins: int) -> dict[str, float]:
    """Cross-entropy and ECE of one split before (T = 1) and after temperature scaling."""
    before, after = scaled_probabilities(logits), scaled_probabilities(logits, temperature)
    return {"loss_before": cross_entropy(logits, y_true), "loss_after": cross_entropy(logits, y_true, temperature),
            "ece_before": expected_calibration_error(before, y_true, bins),
            "ece_after": expected_calibration_error(after, y_true, bins)}


def reliability_rows(logits: np.ndarray, y_true: np.ndarray, temperature: float, bins: int) -> list[dict]:
    """DVC plot data: each non-empty bin before and after scaling, and the diagonal of a
    perfectly calibrated model, as one series each (.dvc/plots/series.json)."""
    rows = [{"series": "perfectly calibrated", "confidence": v, "accuracy": v, "images": 0} for v in (0.0, 1.0)]
    for name, t in (("before (T = 1)", 1.0), (f"after (T = {temperature:.3g})", temperature)):
        table = reliability_table(scaled_probabilities(logits, t), y_true, bins)
        for row in table[table["images"] > 0].itertuples(index=False):
            rows.append({"series": name, "confidence": round(float(row.confidence), 4),
                         "accuracy": round(float(row.accuracy), 4), "images": int(row.images)})
    return rows


def bootstrap_ece(proba_before: np.ndarray, proba_after: np.ndarray, y_true: np.ndarray, bins: int,
                  n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ECE before and after scaling on each of ``n_resamples`` bootstrap resamples of the test
    images (the same images for both, so their difference is paired)."""
    rng = np.random.default_rng(seed)
    before, after = np.empty(n_resamples), np.empty(n_resamples)
    n = len(y_true)
    for b in range(n_resamples):
        idx = rng.integers(0, n, n)
        before[b] = expected_calibration_error(proba_before[idx], y_true[idx], bins)
        after[b] = expected_calibration_error(proba_after[idx], y_true[idx], bins)
    return before, after


def calibration_verdict(low: float, high: float) -> str:
    """In words, what an interval of ECE(after) - ECE(before) says: improved only when it lies
    wholly below 0, worse only when wholly above."""
    if high < 0:
        return "improved"
    if low > 0:
        return "worse"
    return "not distinguishable"
