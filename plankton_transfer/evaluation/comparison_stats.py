"""The comparison's numbers a scientist can defend: intervals, paired tests, cross-validation,
calibration and abundance, as rows and as markdown sections of compare.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.paired import compare_pairs, pair_sentence
from plankton_transfer.files import read_json
from plankton_transfer.params import StatsParams

INTERVAL_KEYS = ("accuracy", "balanced_accuracy", "macro_f1")
CALIBRATION_KEYS = ("temperature", "val_loss_before", "val_loss_after", "test_loss_before", "test_loss_after",
                    "test_ece_before", "test_ece_after")


def uncertainty_fields(m: dict) -> dict:
    """A comparison row's interval, calibration and abundance columns from evaluate metrics ``m``."""
    out: dict = {"test_balanced_accuracy": m["test"]["balanced_accuracy"]}
    for split, keys in (("val", ("accuracy",)), ("test", INTERVAL_KEYS)):
        for key in keys:
            if f"{key}_lo" in m[split]:
                out[f"{split}_{key}_lo"], out[f"{split}_{key}_hi"] = m[split][f"{key}_lo"], m[split][f"{key}_hi"]
    calibration = m.get("calibration") or {}
    out.update({key: calibration[key] for key in CALIBRATION_KEYS if key in calibration})
    if "val_loss_before" in calibration:  # the head's own cross-entropy, as the study reports it
        out["val_loss"] = calibration["val_loss_before"]
    out.update(m.get("abundance") or {})
    return out


def add_crossval(rows: list[dict], crossval_dir: Path) -> None:
    """Each row's cross-validation means and standard deviations (crossval@<model> metrics)."""
    for row in rows:
        path = crossval_dir / f"{row['model']}.json"
        cv = read_json(path).get(row["model"], {}).get("crossval")
        if cv is None:
            raise UserError(f"{path} holds no cross-validation of {row['model']}; run dvc repro")
        row.update({f"cv_{key}": value for key, value in cv.items()})


def read_predictions(models: list[str], predictions_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every model's test predictions, checked to be on the same images in the same order."""
    frames = {}
    for name in models:
        path = predictions_dir / f"{name}.csv"
        if not path.is_file():
            raise UserError(f"{path} not found; run the evaluate stage first (dvc repro)")
        frames[name] = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "true": str, "predicted": str})
    first = frames[models[0]]
    for name, frame in frames.items():
        if frame["path"].tolist() != first["path"].tolist():
            raise UserError(f"{name} and {models[0]} were tested on different images; re-run dvc repro so that "
                            "every model is evaluated on the same split")
    classes = sorted(set(first["true"]).union(*(set(f["predicted"]) for f in frames.values())))
    code = {c: i for i, c in enumerate(classes)}
    y_true = first["true"].map(code).to_numpy()
    return y_true, {name: frame["predicted"].map(code).to_numpy() for name, frame in frames.items()}


def pair_rows(models: list[str], predictions_dir: Path, cfg: StatsParams, seed: int) -> list[dict]:
    if len(models) < 2:
        return []
    y_true, predictions = read_predictions(models, predictions_dir)
    rows = compare_pairs(y_true, predictions, cfg.confidence, cfg.resamples, seed)
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def intervals_note(cfg: StatsParams, seed: int) -> str:
    if cfg.interval_method == "bootstrap":
        simulated = (f"the stratified bootstrap (each class's test images resampled within the class; {cfg.resamples} "
                     f"resamples, seed {seed}), which cannot vary a class with one test image")
    else:
        simulated = ("central interval of each class's confusion rates drawn from their posterior given its test "
                     f"images (Dirichlet, Jeffreys prior; {cfg.resamples} draws, seed {seed}), which stays honest for "
                     "classes with one or two test images, where a bootstrap cannot vary (stats.interval_method)")
    return (f"Intervals: {100 * cfg.confidence:g} %. Accuracy: Wilson score interval. Balanced accuracy and "
            f"macro-F1: {simulated}. Cross-entropy: the head's validation cross-entropy before temperature scaling, "
            "as the study reports it.")


def pairs_section(pairs: list[dict], cfg: StatsParams, n_models: int) -> str:
    text = "## Paired comparison on the same test images\n\n"
    if not pairs:
        return text + f"Only {n_models} model: there is no pair to compare.\n"
    text += "".join(f"- {pair_sentence(row, cfg.confidence)}\n" for row in pairs)
    return text + (f"\nPoints: difference in test accuracy, with a paired bootstrap interval (test images drawn "
                   f"with replacement, both models scored on the same draws; {cfg.resamples} resamples). "
                   "p: exact McNemar test "
                   f"(statsmodels) on the images exactly one of the two got right; not corrected for the "
                   f"{len(pairs)} comparisons (Bonferroni: multiply by {len(pairs)}).\n")


def crossval_section(rows: list[dict]) -> str:
    first = rows[0]
    text = (f"## Cross-validation on the cached features\n\n{first['cv_folds']}-fold stratified cross-validation "
            f"repeated {first['cv_repeats']} times over all {first['cv_images']} filtered images; in each fold "
            "the head is trained with the train stage's protocol, early-stopped on a part of the fold's training "
            "images, never its test part.\n\n"
            "| Model | Accuracy (%) | Macro-F1 (%) | Cross-entropy |\n|---|---:|---:|---:|\n")
    for r in rows:
        text += (f"| {r['model']} | {100 * r['cv_accuracy_mean']:.1f} ± {100 * r['cv_accuracy_std']:.1f} "
                 f"| {100 * r['cv_macro_f1_mean']:.1f} ± {100 * r['cv_macro_f1_std']:.1f} "
                 f"| {r['cv_loss_mean']:.4f} ± {r['cv_loss_std']:.4f} |\n")
    return text + ("\nMean ± standard deviation over the folds. Folds share training images, so the standard "
                   "deviation understates the uncertainty of the mean. Per-fold numbers: "
                   "`metrics/crossval/<model>_folds.csv`; out-of-fold confusion matrices: `plots/crossval/`.\n")


def calibration_section(rows: list[dict], cfg: StatsParams) -> str:
    text = ("## Calibration\n\nTemperature scaling fitted on the validation split; probabilities everywhere "
            f"(metrics, misclassified, predictions, `plankton-predict`) are scaled. ECE: {cfg.calibration_bins} "
            "equal-width confidence bins, test split.\n\n"
            "| Model | Temperature | Test ECE before → after | Test cross-entropy before → after |\n"
            "|---|---:|---:|---:|\n")
    for r in rows:
        text += (f"| {r['model']} | {r['temperature']:.3f} | {r['test_ece_before']:.3f} → {r['test_ece_after']:.3f} "
                 f"| {r['test_loss_before']:.4f} → {r['test_loss_after']:.4f} |\n")
    return text + "\nReliability diagrams: `plots/calibration/`.\n"


def abundance_section(rows: list[dict], abundance_dir: Path) -> str:
    text = ("## Abundance (test split)\n\nHow many images of each class: counted from the predictions "
            "(classify and count) and adjusted with the confusion rates measured on the validation split. "
            "Error: total absolute proportion error (half the sum of absolute differences of class proportions; "
            "0 is exact).\n\n| Model | Classify-and-count error | Adjusted-count error |\n|---|---:|---:|\n")
    text += "".join(f"| {r['model']} | {r['classify_count_error']:.3f} | {r['adjusted_count_error']:.3f} |\n"
                    for r in rows)
    tables = {r["model"]: pd.read_csv(abundance_dir / f"{r['model']}.csv", keep_default_na=False) for r in rows}
    first = next(iter(tables.values()))
    header = "| Class | True | " + " | ".join(f"{m} counted | {m} adjusted" for m in tables) + " |\n"
    text += "\n" + header + "|---|---:|" + "---:|---:|" * len(tables) + "\n"
    for i, row in first.iterrows():
        cells = " | ".join(f"{t.loc[i, 'predicted']} | {t.loc[i, 'adjusted']:.1f}" for t in tables.values())
        text += f"| {row['class']} | {row['true']} | {cells} |\n"
    return text + "\nBar charts: `plots/abundance/`.\n"


CURVES = {"train_loss": ("train", "loss"), "val_loss": ("val", "loss"), "train_accuracy": ("train", "accuracy"),
          "val_accuracy": ("val", "accuracy")}


def training_curves(models: list[str], train_dir: Path) -> list[dict]:
    """Every model's per-epoch curves in one table (rows: series = model, step, train/val loss and
    accuracy), read from the train stages' DVCLive files
    (``<train_dir>/<model>/plots/metrics/<split>/<metric>.tsv``), for the overlaid DVC plots."""
    rows = []
    for name in models:
        columns = {}
        for key, (split, metric) in CURVES.items():
            path = train_dir / name / "plots" / "metrics" / split / f"{metric}.tsv"
            if not path.is_file():
                raise UserError(f"{path} not found; run the train stage first (dvc repro)")
            columns[key] = pd.read_csv(path, sep="\t").set_index("step")[metric]
        frame = pd.DataFrame(columns).reset_index()
        rows += [{"series": name, "step": int(r["step"]), **{k: round(float(r[k]), 6) for k in CURVES}}
                 for _, r in frame.iterrows()]
    return rows
