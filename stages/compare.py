"""Stage compare: one table of all models, in the study's columns and more.

Inputs:  ``--metrics-dir``/<model>.json from every evaluate stage (the models in
         params.yaml ``models``).
Outputs: ``--out-dir``/compare.md, compare.json, compare.csv; ``--plot`` (test accuracy
         against extract + train time per model).
Params:  ``models``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from stages.common import UserError, read_json, read_params, run_cli, write_csv, write_json, write_text
from stages.plots import plot_accuracy_vs_time

STUDY_NOTE = (
    "The study (ImageNet-pretrained, frozen, 17 CPR classes, validation set): AlexNet 95.29 % / 0.1331 / "
    "47 epochs / 2803 s; VGG11 97.47 % / 0.0813 / 91 epochs / 6218 s, its time being GPU time for re-running "
    "the frozen backbone every epoch."
)


def comparison_rows(models: list[str], metrics_dir: Path) -> list[dict]:
    rows = []
    for name in models:
        m = read_json(metrics_dir / f"{name}.json").get(name)
        if m is None:
            raise UserError(f"{metrics_dir / f'{name}.json'} holds no metrics for {name}; run dvc repro")
        rows.append({
            "model": name,
            "pretrained": m["pretrained"],
            "val_accuracy": m["val"]["accuracy"],
            "val_loss": m["val"]["loss"],
            "epochs": m["epochs"],
            "total_seconds": round(m["extract_seconds"] + m["train_seconds"], 2),
            "test_accuracy": m["test"]["accuracy"],
            "test_top5": m["test"]["top5"],
            "test_macro_f1": m["test"]["macro_f1"],
            "parameters": m["parameters"],
            "weights": m["weights"],
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    header = ("| Model | Weights | Val accuracy (%) | Cross-entropy | Epochs | Time (s) | Test accuracy (%) "
              "| Top-5 (%) | Macro-F1 | Parameters |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        weights = r["weights"] if r["pretrained"] else f"**{r['weights']}**"
        lines.append(
            f"| {r['model']} | {weights} | {100 * r['val_accuracy']:.2f} | {r['val_loss']:.4f} | {r['epochs']} "
            f"| {r['total_seconds']:.1f} | {100 * r['test_accuracy']:.2f} | {100 * r['test_top5']:.2f} "
            f"| {r['test_macro_f1']:.4f} | {r['parameters'] / 1e6:.1f} M |"
        )
    return "\n".join(lines) + "\n"


def report_markdown(rows: list[dict]) -> str:
    text = "# Model comparison\n\n" + markdown_table(rows)
    text += "\nTime: feature extraction (each image through the frozen backbone once) plus head training.\n"
    if not all(r["pretrained"] for r in rows):
        text += ("\n**Models marked NOT pretrained ran with randomly initialised backbones** because their ImageNet "
                 "weights were not available (see README, 'Pretrained weights'); their numbers are not comparable "
                 "with the study's.\n")
    return text + f"\n{STUDY_NOTE}\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--metrics-dir", type=Path, default=Path("metrics/evaluate"))
    p.add_argument("--out-dir", type=Path, default=Path("metrics/compare"))
    p.add_argument("--plot", type=Path, default=Path("plots/compare/accuracy_vs_time.png"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    models = read_params(args.params).get("models")
    if not models or not isinstance(models, list):
        raise UserError("params.yaml: 'models' must be a non-empty list of backbone names")
    rows = comparison_rows(models, args.metrics_dir)
    text = report_markdown(rows)
    write_text(args.out_dir / "compare.md", text)
    write_json(args.out_dir / "compare.json", rows)
    write_csv(args.out_dir / "compare.csv", pd.DataFrame(rows))
    plot_accuracy_vs_time(rows, args.plot)
    print(text)
    return rows


if __name__ == "__main__":
    run_cli(main)
