"""Stage evaluate@<model>: honest numbers on the validation and test splits.

Inputs:  ``--model-file`` from train, ``--features`` from extract, ``--split-dir`` (image paths).
Outputs: ``--metrics`` JSON (the summary that ``dvc exp show`` lists): val/test accuracy, top-5,
         cross-entropy, macro-F1, balanced accuracy; epochs, best epoch, training seconds,
         extraction images/s; weight source and sha256, pretrained or NOT;
         ``--confusion`` JSON (rows of actual/predicted class names, for DVC's confusion plot);
         ``--confusion-png`` (counts, row-normalised colours, like the study's figure);
         ``--per-class`` CSV (precision/recall/F1/support per class, test split);
         ``--misclassified`` CSV (test images: path, true, predicted, probability);
         ``--run-record`` JSON: how these numbers were made (weights, preprocessing, training
         params, seeds, library versions and device of the extract and train runs).
Params:  none (everything comes from the model file).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common import run_cli, write_csv, write_json
from stages.features import load_meta, load_split
from stages.head import load_model_file
from stages.metrics import confusion, per_class_table, softmax, summary_metrics
from stages.plots import plot_confusion


def predict_proba(record: dict, features: np.ndarray) -> np.ndarray:
    """Class probabilities of the trained head for float16 feature rows."""
    weight = record["head"]["weight"].numpy()
    bias = record["head"]["bias"].numpy()
    return softmax(np.asarray(features, dtype=np.float32) @ weight.T + bias)


def misclassified(paths: pd.Series, y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    y_pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return pd.DataFrame({
        "path": paths.to_numpy()[wrong],
        "true": [classes[i] for i in y_true[wrong]],
        "predicted": [classes[i] for i in y_pred[wrong]],
        "probability": proba[wrong, y_pred[wrong]].round(4),
        "true_probability": proba[wrong, y_true[wrong]].round(4),
    }).sort_values("probability", ascending=False)


def rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def evaluate_model(record: dict, meta: dict, features: Path, split_dir: Path, out: argparse.Namespace) -> dict:
    classes = record["classes"]
    results = {}
    for split in ("val", "test"):
        x, y_true = load_split(features, split)
        proba = predict_proba(record, x)
        results[split] = rounded(summary_metrics(y_true, proba))
    y_test, proba_test = y_true, proba  # the loop ends on the test split
    y_pred = proba_test.argmax(axis=1)
    write_confusion(y_test, y_pred, classes, record["backbone"], out.confusion, out.confusion_png)
    write_csv(out.per_class, per_class_table(y_test, y_pred, classes).round(4))
    paths = pd.read_csv(split_dir / "test.csv", keep_default_na=False)["path"]
    assert len(paths) == len(y_test), "test features and data/split/test.csv disagree: re-run extract"
    write_csv(out.misclassified, misclassified(paths, y_test, proba_test, classes))
    training, weights = record["training"], record["weights"]
    return {
        "pretrained": weights["pretrained"],
        "weights": weights["description"],
        **results,
        "epochs": training["epochs"],
        "best_epoch": training["best_epoch"],
        "train_seconds": round(training["seconds"], 3),
        "extract_seconds": meta["seconds"],
        "extract_images_per_s": meta["images_per_s"],
        "lr": training["lr"],
        "parameters": meta["backbone_parameters"] + int(record["head"]["weight"].numel() + record["head"]["bias"].numel()),
        "weights_sha256": weights["sha256"],
    }


def run_record(record: dict, meta: dict) -> dict:
    """Everything that determined the metrics, for reproducing them later."""
    training = record["training"]
    return {
        "backbone": record["backbone"],
        "weights": record["weights"],
        "preprocess": record["preprocess"],
        "classes": record["classes"],
        "split_sizes": meta["sizes"],
        "train_params": training["params"],
        "seed": training["seed"],
        "deterministic_algorithms": True,  # stages/runtime.py: use_deterministic_algorithms
        "lr_sweep_best_val_loss": training["lr_sweep"],
        "extract_environment": meta["environment"],
        "train_environment": training["environment"],
    }


def write_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], model: str, json_path: Path,
                    png_path: Path) -> None:
    rows = [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y_true, y_pred)]
    write_json(json_path, rows)
    accuracy = float(np.mean(y_true == y_pred)) if len(y_true) else 0.0
    plot_confusion(confusion(y_true, y_pred, len(classes)), classes,
                   f"{model}: test confusion matrix (accuracy {accuracy:.2%}, n={len(y_true)})",
                   png_path)


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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    record, meta = load_model_file(args.model_file), load_meta(args.features)
    summary = evaluate_model(record, meta, args.features, args.split_dir, args)
    write_json(args.metrics, {record["backbone"]: summary})  # keyed by model: short, unique `dvc exp show` columns
    write_json(args.run_record, run_record(record, meta))
    print(f"evaluate {record['backbone']}: val accuracy {summary['val']['accuracy']:.4f}, "
          f"test accuracy {summary['test']['accuracy']:.4f}, weights: {summary['weights']}")
    return summary


if __name__ == "__main__":
    run_cli(main)

