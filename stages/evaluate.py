"""Stage evaluate@<model>: honest numbers on the validation and test splits.

Inputs:  ``--model-file`` from train, ``--features`` from extract, ``--split-dir`` (image paths).
Outputs: ``--metrics`` JSON (what ``dvc exp show`` lists; numbers and the pretrained flag):
         val/test accuracy, top-5, cross-entropy, macro-F1, balanced accuracy; epochs, best
         epoch, training seconds, extraction images/s;
         ``--confusion`` JSON (rows of actual/predicted class names, for DVC's confusion plot);
         ``--confusion-png`` (counts, row-normalised colours, like the study's figure);
         ``--per-class`` CSV (precision/recall/F1/support per class, test split);
         ``--misclassified`` CSV (test images: path, true, predicted, probability);
         ``--run-record`` JSON: how these numbers were made (weight source, sha256 and check,
         preprocessing, training params, seeds, library versions and device);
         ``--thresholds-table`` CSV and ``--thresholds-png``: test accuracy against the fraction
         of images accepted automatically as a global threshold rises (evaluation/thresholds.py).
         Uncertainty (plankton_transfer/evaluation/uncertainty.py): in the metrics, a
         ``stats.confidence`` interval for every accuracy (Wilson), balanced accuracy and
         macro-F1 (per-class posterior draws) as ``<metric>_lo``/``_hi``; ``calibration``: the
         temperature and the cross-entropy and ECE before/after it; ``abundance``: the test
         composition error of classify-and-count and of the adjusted count;
         ``--predictions`` CSV (every test image, for the paired tests of the compare stage);
         ``--reliability`` JSON + ``--reliability-png`` (reliability diagram, test split);
         ``--abundance`` CSV + ``--abundance-png`` (true, predicted, adjusted counts per class).
Params:  ``stats``, ``base.seed`` (the draws' seed); the rest comes from the model file
         (library: plankton_transfer/evaluation/).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.data.features import load_meta
from plankton_transfer.data.splitting import read_splits
from plankton_transfer.errors import run_cli
from plankton_transfer.evaluation.metrics import confusion, per_class_table
from plankton_transfer.evaluation.plots import plot_confusion
from plankton_transfer.evaluation.scoring import (confusion_rows, misclassified, model_summary, run_record,
                                                  split_probabilities)
from plankton_transfer.evaluation.thresholds import write_threshold_report
from plankton_transfer.evaluation.uncertainty import assess, predictions_table
from plankton_transfer.evaluation.uncertainty_plots import plot_abundance, plot_reliability
from plankton_transfer.files import write_csv, write_json
from plankton_transfer.models.heads import load_model_file
from plankton_transfer.params import BaseParams, StatsParams, params_argument, read_params, section


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--split-dir", type=Path, default=Path("data/split"))
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--confusion", type=Path, required=True, help="DVC confusion plot data (JSON)")
    p.add_argument("--confusion-png", type=Path, required=True)
    p.add_argument("--per-class", type=Path, required=True)
    p.add_argument("--misclassified", type=Path, required=True)
    p.add_argument("--run-record", type=Path, required=True)
    p.add_argument("--thresholds-table", type=Path, required=True, help="accuracy against images auto-accepted (CSV)")
    p.add_argument("--thresholds-png", type=Path, required=True)
    p.add_argument("--predictions", type=Path, help="every test image's prediction (CSV)")
    p.add_argument("--reliability", type=Path, help="reliability diagram data (JSON, DVC plot)")
    p.add_argument("--reliability-png", type=Path)
    p.add_argument("--abundance", type=Path, help="true, predicted and adjusted test counts per class (CSV)")
    p.add_argument("--abundance-png", type=Path)
    params_argument(p)
    return p.parse_args(argv)


def add_assessment(summary: dict, assessment) -> None:
    """Intervals beside each split's numbers; calibration and abundance as their own groups."""
    for split, values in assessment.intervals.items():
        summary[split].update(values)
    summary["calibration"] = assessment.calibration
    summary["abundance"] = assessment.abundance


def write_uncertainty_outputs(args: argparse.Namespace, name: str, assessment, predictions) -> None:
    if args.predictions:
        write_csv(args.predictions, predictions)
    if args.reliability:
        write_json(args.reliability, assessment.reliability_rows)
    if args.reliability_png:
        c = assessment.calibration
        plot_reliability(assessment.reliability, c["temperature"], f"{name}: reliability on the test split (ECE "
                         f"{c['test_ece_before']:.3f} before, {c['test_ece_after']:.3f} after scaling)",
                         args.reliability_png)
    if args.abundance:
        write_csv(args.abundance, assessment.abundance_table)
    if args.abundance_png:
        plot_abundance(assessment.abundance_table, assessment.abundance, f"{name}: test counts per class",
                       args.abundance_png)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    record, meta = load_model_file(args.model_file), load_meta(args.features)
    name, classes = record["backbone"], record["classes"]
    scores = {split: split_probabilities(record, args.features, split) for split in ("val", "test")}
    summary = model_summary(record, meta, scores)
    params = read_params(args.params)
    assessment = assess(record, args.features, section(StatsParams, params, "stats"),
                        section(BaseParams, params, "base").seed)
    add_assessment(summary, assessment)
    y_test, proba_test = scores["test"]
    y_pred = proba_test.argmax(axis=1)
    paths = read_splits(args.split_dir)["test"]["path"]
    assert len(paths) == len(y_test), "test features and the split's test.csv disagree: re-run extract"
    write_json(args.confusion, confusion_rows(y_test, y_pred, classes))
    accuracy = summary["test"]["accuracy"]
    plot_confusion(confusion(y_test, y_pred, len(classes)), classes,
                   f"{name}: test confusion matrix (accuracy {accuracy:.2%}, n={len(y_test)})", args.confusion_png)
    write_csv(args.per_class, per_class_table(y_test, y_pred, classes).round(4))
    write_csv(args.misclassified, misclassified(paths, y_test, proba_test, classes))
    write_json(args.metrics, {name: summary})  # keyed by model: short, unique `dvc exp show` columns
    write_json(args.run_record, run_record(record, meta))
    write_threshold_report(record, y_test, proba_test, args.thresholds_table, args.thresholds_png)
    write_uncertainty_outputs(args, name, assessment, predictions_table(paths, y_test, proba_test, classes))
    test = summary["test"]
    print(f"evaluate {name}: val accuracy {summary['val']['accuracy']:.4f}, "
          f"test accuracy {accuracy:.4f} [{test['accuracy_lo']:.4f}, {test['accuracy_hi']:.4f}], "
          f"test ECE {summary['calibration']['test_ece_before']:.3f} -> {summary['calibration']['test_ece_after']:.3f} "
          f"(temperature {summary['calibration']['temperature']:.3f}), weights: {record['weights']['description']}")
    return summary


if __name__ == "__main__":
    run_cli(main)
