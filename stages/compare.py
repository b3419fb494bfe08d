"""Stage compare: one table of all models, in the study's columns and more.

Inputs:  ``--metrics-dir``/<model>.json from every evaluate stage and ``--runs-dir``/<model>.json
         (their run records, for the weight source), for the models in params.yaml ``models``.
Outputs: ``--out-dir``/compare.md, compare.json, compare.csv; ``--plot`` (test accuracy
         against extract + train time per model, with Wilson intervals).
         With ``--crossval-dir`` and the rest (plankton_transfer/evaluation/comparison_stats.py):
         the cross-validation of every model; ``--out-dir``/pairs.json and pairs.csv, every pair
         of models on the same test images (``--predictions-dir``): accuracy difference with a
         paired bootstrap interval and the exact McNemar p-value; calibration and abundance
         (``--abundance-dir``) sections in compare.md; ``--intervals-plot`` (test metrics with
         intervals per model); ``--curves`` (every model's training curves in one table, read
         from ``--train-dir``, for the overlaid plots defined at the top of dvc.yaml).
Params:  ``models``, ``stats``, ``base.seed`` (library: plankton_transfer/evaluation/comparison.py,
         comparison_stats.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from plankton_transfer.errors import run_cli
from plankton_transfer.evaluation.comparison import comparison_rows, report_markdown
from plankton_transfer.evaluation.comparison_stats import (abundance_section, add_crossval, calibration_section,
                                                           crossval_section, intervals_note, pair_rows, pairs_section,
                                                           training_curves)
from plankton_transfer.evaluation.paired import PAIR_COLUMNS
from plankton_transfer.evaluation.plots import plot_accuracy_vs_time
from plankton_transfer.evaluation.uncertainty_plots import plot_intervals
from plankton_transfer.files import write_csv, write_json, write_text
from plankton_transfer.params import BaseParams, StatsParams, check_model_names, params_argument, read_params, section


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--metrics-dir", type=Path, default=Path("metrics/evaluate"))
    p.add_argument("--runs-dir", type=Path, default=Path("metrics/runs"))
    p.add_argument("--out-dir", type=Path, default=Path("metrics/compare"))
    p.add_argument("--plot", type=Path, default=Path("plots/compare/accuracy_vs_time.png"))
    p.add_argument("--crossval-dir", type=Path, help="crossval@<model> metrics (<model>.json)")
    p.add_argument("--predictions-dir", type=Path, help="evaluate's per-image test predictions (<model>.csv)")
    p.add_argument("--abundance-dir", type=Path, help="evaluate's test counts per class (<model>.csv)")
    p.add_argument("--intervals-plot", type=Path, help="test metrics with their intervals (PNG)")
    p.add_argument("--train-dir", type=Path, help="the train stages' DVCLive folders (<model>/plots/metrics)")
    p.add_argument("--curves", type=Path, help="every model's training curves in one table (JSON)")
    params_argument(p)
    return p.parse_args(argv)


def statistics_sections(args: argparse.Namespace, rows: list[dict], cfg: StatsParams, seed: int) -> list[str]:
    """compare.md's sections after the table; writes pairs.json/csv and the intervals figure."""
    sections = [intervals_note(cfg, seed)]
    if args.predictions_dir:
        pairs = pair_rows([r["model"] for r in rows], args.predictions_dir, cfg, seed)
        write_json(args.out_dir / "pairs.json", pairs)
        write_csv(args.out_dir / "pairs.csv", pd.DataFrame(pairs, columns=PAIR_COLUMNS))
        sections.append(pairs_section(pairs, cfg, len(rows)))
    if args.crossval_dir:
        add_crossval(rows, args.crossval_dir)
        sections.append(crossval_section(rows))
    if "temperature" in rows[0]:
        sections.append(calibration_section(rows, cfg))
    if args.abundance_dir:
        sections.append(abundance_section(rows, args.abundance_dir))
    if args.intervals_plot:
        plot_intervals(rows, cfg.confidence, args.intervals_plot)
    return sections


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    params = read_params(args.params)
    models = check_model_names(params.get("models"))
    rows = comparison_rows(models, args.metrics_dir, args.runs_dir)
    sections = statistics_sections(args, rows, section(StatsParams, params, "stats"),
                                   section(BaseParams, params, "base").seed)
    text = report_markdown(rows, sections)
    write_text(args.out_dir / "compare.md", text)
    write_json(args.out_dir / "compare.json", rows)
    write_csv(args.out_dir / "compare.csv", pd.DataFrame(rows))
    plot_accuracy_vs_time(rows, args.plot)
    if args.train_dir and args.curves:
        write_json(args.curves, training_curves(models, args.train_dir))
    print(text)
    return rows


if __name__ == "__main__":
    run_cli(main)
