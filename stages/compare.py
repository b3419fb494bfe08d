"""Stage compare: one table of all models, in the study's columns and more.

Inputs:  ``--metrics-dir``/<model>.json from every evaluate stage and ``--runs-dir``/<model>.json
         (their run records, for the weight source), for the models in params.yaml ``models``.
Outputs: ``--out-dir``/compare.md, compare.json, compare.csv; ``--plot`` (test accuracy
         against extract + train time per model).
Params:  ``models`` (library: plankton_transfer/evaluation/comparison.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from plankton_transfer.errors import run_cli
from plankton_transfer.evaluation.comparison import comparison_rows, report_markdown
from plankton_transfer.evaluation.plots import plot_accuracy_vs_time
from plankton_transfer.files import write_csv, write_json, write_text
from plankton_transfer.params import check_model_names, params_argument, read_params


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--metrics-dir", type=Path, default=Path("metrics/evaluate"))
    p.add_argument("--runs-dir", type=Path, default=Path("metrics/runs"))
    p.add_argument("--out-dir", type=Path, default=Path("metrics/compare"))
    p.add_argument("--plot", type=Path, default=Path("plots/compare/accuracy_vs_time.png"))
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    models = check_model_names(read_params(args.params).get("models"))
    rows = comparison_rows(models, args.metrics_dir, args.runs_dir)
    text = report_markdown(rows)
    write_text(args.out_dir / "compare.md", text)
    write_json(args.out_dir / "compare.json", rows)
    write_csv(args.out_dir / "compare.csv", pd.DataFrame(rows))
    plot_accuracy_vs_time(rows, args.plot)
    print(text)
    return rows


if __name__ == "__main__":
    run_cli(main)
