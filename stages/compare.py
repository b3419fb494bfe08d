"""Stage compare: one table of all models, in the study's columns and more, and the headline.

Inputs:  ``--evaluations``/<model>/ from every evaluate stage (summary, run record, predictions,
         abundance), ``--crossvals``/<model>/ from every crossval stage and ``--opensets``/<model>/
         from every openset stage, for the models in params.yaml ``models`` and the fine-tuned
         ``<backbone>-ft`` of ``finetune.models`` (evaluated, neither cross-validated nor
         left-classes-out: their backbone learnt the train split); ``--train-dir`` (the train
         and finetune stages' DVCLive curves).
Outputs: ``--headline``: metrics/headline.json, the only DVC metrics file (per model: test
         accuracy with its interval, balanced accuracy, macro-F1, cross-validated accuracy, the
         unknown detector's AUROC;
         evaluation/metrics.py HEADLINE), so ``dvc exp show`` is a readable first screen;
         ``--out-dir``: compare.md (the table, then paired tests, cross-validation, calibration,
         review, open-set and abundance sections), compare.json and compare.csv (every number, flat),
         pairs.json and pairs.csv (every pair of models on the same test images: accuracy
         difference with a paired bootstrap interval, exact McNemar p);
         ``--plots-dir``: accuracy_vs_time.png, intervals.png; ``--curves``: every model's
         training curves in one table (the overlaid plots at the top of dvc.yaml).
Params:  ``models``, ``finetune.models``, ``stats``, ``base.seed`` (library: plankton_transfer/evaluation/comparison.py,
         comparison_stats.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from plankton_transfer.errors import run_cli
from plankton_transfer.evaluation.comparison import ModelResults, flat_row, headline, load_results, report_markdown
from plankton_transfer.evaluation.comparison_stats import (abundance_section, calibration_section, crossval_section,
                                                           intervals_note, openset_section, pair_rows, pairs_section, review_section,
                                                           training_curves)
from plankton_transfer.evaluation.paired import PAIR_COLUMNS
from plankton_transfer.evaluation.plots import plot_accuracy_vs_time
from plankton_transfer.evaluation.uncertainty_plots import plot_intervals
from plankton_transfer.files import atomic_path, write_csv, write_json, write_text
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import check_model_names, params_argument, read_params, section
from plankton_transfer.params.finetune import finetuned_models
from plankton_transfer.params.stats import StatsParams


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evaluations", type=Path, default=Path("metrics/evaluate"))
    p.add_argument("--crossvals", type=Path, default=Path("metrics/crossval"))
    p.add_argument("--opensets", type=Path, default=Path("metrics/openset"))
    p.add_argument("--train-dir", type=Path, default=Path("plots/train"))
    p.add_argument("--headline", type=Path, default=Path("metrics/headline.json"))
    p.add_argument("--out-dir", type=Path, default=Path("metrics/compare"))
    p.add_argument("--plots-dir", type=Path, default=Path("plots/compare"))
    p.add_argument("--curves", type=Path, default=Path("plots/curves.json"))
    params_argument(p)
    return p.parse_args(argv)


def write_comparison(folder: Path, results: list[ModelResults], args: argparse.Namespace, cfg: StatsParams,
                     seed: int) -> str:
    """compare.md, compare.json/csv and pairs.json/csv into ``folder``; returns compare.md's text."""
    rows = [flat_row(r) for r in results]
    pairs = pair_rows([r.name for r in results], args.evaluations, cfg, seed)
    sections = [intervals_note(cfg, seed), pairs_section(pairs, cfg, len(results)), crossval_section(results),
                calibration_section(results, cfg), review_section(results), openset_section(results),
                abundance_section(results, args.evaluations)]
    text = report_markdown(results, sections)
    write_text(folder / "compare.md", text)
    write_json(folder / "compare.json", rows)
    write_csv(folder / "compare.csv", pd.DataFrame(rows))
    write_json(folder / "pairs.json", pairs)
    write_csv(folder / "pairs.csv", pd.DataFrame(pairs, columns=PAIR_COLUMNS))
    return text


def main(argv: list[str] | None = None) -> list[ModelResults]:
    args = parse_args(argv)
    params = read_params(args.params)
    finetuned = finetuned_models(params)
    models = check_model_names(params.get("models")) + finetuned  # each frozen model, then each fine-tuned one
    cfg, seed = section(StatsParams, params, "stats"), section(BaseParams, params, "base").seed
    results = load_results(models, args.evaluations, args.crossvals, args.opensets, tuple(finetuned))
    with atomic_path(args.out_dir, directory=True) as folder, atomic_path(args.plots_dir, directory=True) as plots:
        folder.mkdir()
        plots.mkdir()
        text = write_comparison(folder, results, args, cfg, seed)
        rows = [flat_row(r) for r in results]
        plot_accuracy_vs_time(rows, plots / "accuracy_vs_time.png")
        plot_intervals(rows, cfg.confidence, plots / "intervals.png")
    write_json(args.curves, training_curves(models, args.train_dir))
    write_json(args.headline, headline(results))
    print(text)
    return results


if __name__ == "__main__":
    run_cli(main)
