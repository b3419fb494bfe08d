"""Stage evaluate@<model>: honest numbers on the validation and test splits.

Inputs:  ``--model-file`` from train, ``--features`` from extract, ``--split-dir`` (image paths).
Outputs: ``--out-dir`` (one folder):
           summary.json      every metric of val and test with its interval (evaluation/metrics.py
                             defines each), calibration (temperature, cross-entropy and ECE before
                             and after, with intervals and a verdict), abundance, review trade-off
                             (evaluation/summary.py: EvaluationSummary);
           run.json          how the numbers were made: weights, sha256, input recipe, training
                             params, seeds, versions, timings (RunRecord);
           per_class.csv, misclassified.csv, predictions.csv (every test image: compare's paired
                             tests), abundance.csv (and abundance_per_sample.csv when the
                             test images' samples are known), review.csv (accuracy against the fraction
                             auto-accepted);
         ``--plots-dir``: confusion.png, review.png, reliability.png, abundance.png;
         DVC plot data: ``--confusion`` (actual/predicted rows), ``--reliability`` (reliability
         diagram), ``--review-curve`` (the review trade-off).
Params:  ``stats``, ``base.seed`` (the intervals' draws); the rest comes from the model file
         (library: plankton_transfer/evaluation/scoring.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.split_files import read_splits
from plankton_transfer.errors import run_cli
from plankton_transfer.evaluation.metrics import confusion, per_class_table
from plankton_transfer.evaluation.plots import plot_confusion
from plankton_transfer.evaluation.scoring import Evaluation, confusion_rows, evaluate_model, misclassified
from plankton_transfer.evaluation.thresholds import write_threshold_report
from plankton_transfer.evaluation.uncertainty import predictions_table
from plankton_transfer.evaluation.uncertainty_plots import plot_abundance, plot_reliability
from plankton_transfer.files import atomic_path, write_csv, write_json
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.provenance import load_meta
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import params_argument, read_params, section
from plankton_transfer.params.stats import StatsParams


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--out-dir", type=Path, required=True, help="the evaluation's folder (summary, run record, tables)")
    p.add_argument("--plots-dir", type=Path, required=True, help="the evaluation's figures (PNG)")
    p.add_argument("--confusion", type=Path, required=True, help="DVC confusion plot data (JSON)")
    p.add_argument("--reliability", type=Path, required=True, help="reliability diagram data (JSON, DVC plot)")
    p.add_argument("--review-curve", type=Path, required=True, help="accuracy against images auto-accepted (CSV)")
    params_argument(p)
    return p.parse_args(argv)


def write_tables(folder: Path, plots: Path, model: ModelFile, result: Evaluation, paths, review_curve: Path) -> None:
    a, classes = result.assessment, list(model.classes)
    y, proba = a.labels["test"], a.proba["test"]
    predicted = proba.argmax(axis=1)
    result.summary.save_json(folder / "summary.json")
    result.run.save_json(folder / "run.json")
    write_csv(folder / "per_class.csv", per_class_table(y, predicted, classes).round(4))
    write_csv(folder / "misclassified.csv", misclassified(paths, y, proba, classes))
    write_csv(folder / "predictions.csv", predictions_table(paths, y, proba, classes))
    write_csv(folder / "abundance.csv", a.abundance_table)
    if a.per_sample is not None:
        write_csv(folder / "abundance_per_sample.csv", a.per_sample.per_sample.round(4))
    write_threshold_report(model, y, proba, [folder / "review.csv", review_curve], plots / "review.png")


def write_figures(plots: Path, model: ModelFile, result: Evaluation) -> None:
    a, s = result.assessment, result.summary
    y, predicted = a.labels["test"], a.proba["test"].argmax(axis=1)
    accuracy = s.estimate("test", "accuracy").value
    plot_confusion(confusion(y, predicted, len(model.classes)), list(model.classes),
                   f"{model.name}: test confusion matrix (accuracy {accuracy:.2%}, n={len(y)})", plots / "confusion.png")
    c = s.calibration
    plot_reliability(a.reliability, c.temperature, f"{model.name}: reliability on the test split (ECE "
                     f"{c.test_ece_before.value:.3f} before, {c.test_ece_after.value:.3f} after scaling: {c.verdict})",
                     plots / "reliability.png")
    plot_abundance(a.abundance_table, a.abundance, f"{model.name}: test class proportions", plots / "abundance.png")


def main(argv: list[str] | None = None) -> Evaluation:
    args = parse_args(argv)
    params = read_params(args.params)
    cfg, seed = section(StatsParams, params, "stats"), section(BaseParams, params, "base").seed
    model, meta = ModelFile.load(args.model_file), load_meta(args.features)
    test = read_splits(args.split_dir)["test"]
    samples = test["sample"].to_numpy() if "sample" in test else None
    result = evaluate_model(model, args.features, meta, cfg, seed, samples)
    paths = test["path"]
    y = result.assessment.labels["test"]
    assert len(paths) == len(y), "test features and the split's test.csv disagree: re-run extract"
    with atomic_path(args.out_dir, directory=True) as folder, atomic_path(args.plots_dir, directory=True) as plots:
        folder.mkdir()
        plots.mkdir()
        write_tables(folder, plots, model, result, paths, args.review_curve)
        write_figures(plots, model, result)
    write_json(args.confusion, confusion_rows(y, result.assessment.proba["test"].argmax(axis=1), list(model.classes)))
    write_json(args.reliability, result.assessment.reliability_rows)
    s = result.summary
    print(f"evaluate {model.name}: val accuracy {s.estimate('val', 'accuracy').shown('accuracy')} %, test accuracy "
          f"{s.estimate('test', 'accuracy').shown('accuracy')} %, test ECE {s.calibration.test_ece_before.value:.3f} -> "
          f"{s.calibration.test_ece_after.value:.3f} ({s.calibration.verdict}; temperature "
          f"{s.calibration.temperature:.3f}), weights: {model.weights.description}")
    if s.convergence_warning:
        print(f"  warning: {s.convergence_warning}")
    return result


if __name__ == "__main__":
    run_cli(main)
