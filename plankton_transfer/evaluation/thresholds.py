"""How many images a person must still check: accuracy against the fraction auto-accepted.

As a global threshold on each test image's top probability rises from 0 to 1, fewer images
are accepted automatically and those accepted are classified more accurately; the rest go to
a person. The table has one row per threshold step (0.00, 0.01, ..., 1.00) that still accepts
an image; the plot draws it, with the model's own per-class thresholds (chosen on the
validation set for ``thresholds.target_precision``, models/thresholds.py) as one point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.evaluation.plots import plt, save_figure
from plankton_transfer.files import write_csv
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.thresholds import review_flags

MARKED = (0.5, 0.8, 0.9, 0.95, 0.99)  # thresholds labelled on the plot


def coverage_table(y_true: np.ndarray, proba: np.ndarray, step: float = 0.01) -> pd.DataFrame:
    """threshold, auto_accepted (fraction), accepted, to_review (images) and accuracy of the accepted."""
    top, correct = proba.max(axis=1), proba.argmax(axis=1) == y_true
    rows = []
    for threshold in np.round(np.arange(0, 1 + step / 2, step), 4):
        accepted = top >= threshold
        if accepted.any():
            rows.append({"threshold": float(threshold), "auto_accepted": round(float(accepted.mean()), 4),
                         "accepted": int(accepted.sum()), "to_review": int((~accepted).sum()),
                         "accuracy": round(float(correct[accepted].mean()), 4)})
    return pd.DataFrame(rows, columns=["threshold", "auto_accepted", "accepted", "to_review", "accuracy"])


def class_threshold_point(model: ModelFile, y_true: np.ndarray, proba: np.ndarray) -> dict:
    """Fraction auto-accepted and their accuracy under the model file's per-class thresholds."""
    predicted = proba.argmax(axis=1)
    accepted = ~review_flags(model.thresholds, model.classes, predicted, proba.max(axis=1))
    accuracy = float((predicted == y_true)[accepted].mean()) if accepted.any() else None
    return {"auto_accepted": float(accepted.mean()), "accepted": int(accepted.sum()),
            "to_review": int((~accepted).sum()), "accuracy": accuracy}


def plot_coverage(table: pd.DataFrame, point: dict, target: float | None, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(table["auto_accepted"], table["accuracy"], marker=".", label="global threshold on the top probability")
    labelled = set()
    for threshold in MARKED:
        row = table[np.isclose(table["threshold"], threshold)]
        xy = (row["auto_accepted"].iat[0], row["accuracy"].iat[0]) if len(row) else None
        if xy is not None and xy not in labelled:  # one label per point: the lowest threshold giving it
            labelled.add(xy)
            ax.annotate(f"{threshold:g}", xy, textcoords="offset points", xytext=(4, -10), fontsize=8)
    if point["accuracy"] is not None:
        label = "per-class thresholds" + (f" (precision {target:g} on val)" if target else "")
        ax.scatter([point["auto_accepted"]], [point["accuracy"]], marker="*", s=160, color="C3", label=label, zorder=3)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(min(0.9, float(table["accuracy"].min()) - 0.05) if len(table) else 0, 1.02)
    ax.set_xlabel("fraction of test images accepted automatically (the rest: checked by a person)")
    ax.set_ylabel("accuracy of the accepted images")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title)
    save_figure(fig, path)


def write_threshold_report(model: ModelFile, y_true: np.ndarray, proba: np.ndarray, table_paths: list[Path],
                           png_path: Path) -> dict:
    """Write the table (CSV, to each of ``table_paths``) and the plot (PNG) for one model's test
    set; returns the per-class point."""
    table = coverage_table(y_true, proba)
    point = class_threshold_point(model, y_true, proba)
    for path in table_paths:
        write_csv(path, table)
    plot_coverage(table, point, model.thresholds.target_precision,
                  f"{model.name}: accuracy against images accepted automatically (test, n={len(y_true)})", png_path)
    return point
