"""Figures written with matplotlib (Agg backend, every figure closed after saving)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plankton_transfer.files import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """Counts in each cell, colours normalised per row (recall), like the study's figure.

    The figure grows with the number of classes so that 20+ class names stay readable.
    """
    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = max(5.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    font = max(5, min(9, 120 // max(n, 1)))
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=font)
    save_figure(fig, path)


def plot_accuracy_vs_time(rows: list[dict], path: Path) -> None:
    """One point per model: test accuracy against the pipeline's seconds (extract + train)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, row in enumerate(rows):
        marker = "o" if row["pretrained"] else "x"
        ax.scatter(row["total_seconds"], row["test_accuracy"], marker=marker, s=60, color=f"C{i}")
        if "test_accuracy_lo" in row:  # the Wilson interval, as an error bar
            ax.errorbar(row["total_seconds"], row["test_accuracy"], capsize=4, fmt="none", alpha=0.6, color=f"C{i}",
                        yerr=[[row["test_accuracy"] - row["test_accuracy_lo"]],
                              [row["test_accuracy_hi"] - row["test_accuracy"]]])
        label = row["model"] + ("" if row["pretrained"] else " (NOT pretrained)")
        ax.annotate(label, (row["total_seconds"], row["test_accuracy"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("extract + train time (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("Test accuracy (bars: Wilson interval) against time per backbone"
                 if rows and "test_accuracy_lo" in rows[0] else "Test accuracy against time per backbone")
    save_figure(fig, path)
