"""Figures for the numbers with uncertainty: reliability diagrams, abundance bars, intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.evaluation.plots import plt, save_figure


def plot_reliability(bins: dict[str, pd.DataFrame], temperature: float, title: str, path: Path) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling; the diagonal is
    a perfectly calibrated model. Marker area grows with the bin's number of images."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    styles = {"before": ("tab:red", "before (T = 1)"), "after": ("tab:blue", f"after (T = {temperature:.3g})")}
    for name, table in bins.items():
        used = table[table["images"] > 0]
        colour, label = styles[name]
        ax.plot(used["confidence"], used["accuracy"], color=colour, alpha=0.6)
        ax.scatter(used["confidence"], used["accuracy"], s=20 + 12 * used["images"], color=colour, label=label,
                   alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability), bin mean")
    ax.set_ylabel("accuracy in the bin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


ABUNDANCE_BARS = (("true", "true", "black"), ("classify_count", "classify and count", "tab:orange"),
                  ("adjusted_count", "adjusted count", "tab:blue"), ("em", "EM-adjusted probabilities", "tab:green"))


def plot_abundance(table: pd.DataFrame, summary: dict, title: str, path: Path) -> None:
    """True and estimated test proportions per class, side by side (the adjusted count only where
    it was used), with the uniform guess as a dashed line; the legend gives each method's error."""
    bars = [b for b in ABUNDANCE_BARS if b[0] == "true" or summary.get(f"{b[0]}_error") is not None]
    n, width = len(table), 0.8 / len(bars)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * n + 3), 4.5))
    for k, (column, label, colour) in enumerate(bars):
        if column != "true":
            label += f" (error {summary[f'{column}_error']:.3f})"
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, table[column], width=width, color=colour, label=label,
               alpha=0.85)
    ax.axhline(1 / max(n, 1), color="grey", linestyle="--", linewidth=1,
               label=f"uniform guess (error {summary['uniform_error']:.3f})")
    ax.set_xticks(x, table["class"], rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("proportion of test images")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


METRICS = (("test_accuracy", "accuracy"), ("test_balanced_accuracy", "balanced accuracy"),
           ("test_macro_f1", "macro-F1"))


def plot_intervals(rows: list[dict], confidence: float, path: Path) -> None:
    """Per model: test accuracy, balanced accuracy and macro-F1 with their intervals, and the
    cross-validated accuracy (mean +- standard deviation over folds) where there is one."""
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(rows) + 3), 4.5))
    width = 0.8 / (len(METRICS) + 1)
    for i, row in enumerate(rows):
        for j, (key, label) in enumerate(METRICS):
            value, low, high = row[key], row[f"{key}_lo"], row[f"{key}_hi"]
            ax.errorbar(i + (j - 1.5) * width, value, yerr=[[value - low], [high - value]], fmt="o", capsize=4,
                        color=f"C{j}", label=label if i == 0 else None)
        if row.get("cv_accuracy_mean") is not None:
            ax.errorbar(i + 1.5 * width, row["cv_accuracy_mean"], yerr=row["cv_accuracy_std"], fmt="s", capsize=4,
                        color="C3", label="cross-validated accuracy (mean ± sd)" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [r["model"] + ("" if r["pretrained"] else "\n(NOT pretrained)") for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score on the test split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Test metrics with {100 * confidence:g} % intervals per backbone", fontsize=10)
    save_figure(fig, path)


def plot_openset(scores: dict, chosen: str, title: str, path: Path) -> None:
    """Per unknown score: AUROC (higher is better) and FPR at 95 % known kept (lower is better),
    with their intervals; the score predict uses is marked."""
    names = list(scores)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(names) + 2.5), 4.2))
    for offset, key, colour, label in ((-0.18, "auroc", "tab:blue", "AUROC"), (0.18, "fpr95", "tab:red", "FPR95")):
        values = np.array([getattr(scores[n], key).value for n in names])
        low = np.array([getattr(scores[n], key).low for n in names])
        high = np.array([getattr(scores[n], key).high for n in names])
        ax.bar(x + offset, values, width=0.34, color=colour, alpha=0.8, label=label,
               yerr=[values - low, high - values], capsize=3)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(x, [f"{n} (used)" if n == chosen else n for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("leave-classes-out, mean over repeats")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
