"""Stage openset@<model>: can the model say "unknown" for organisms of no trained class?

Inputs:  ``--model-file`` from train (head, temperature, classes), ``--features`` from extract.
Outputs: ``--out-dir`` (one folder): summary.json (the score predict uses and how it was
         chosen, its threshold, and per score AUROC, FPR95, AUPR, the share of known images
         kept and of unknown images rejected, and the composition error with and without
         rejection, each with an interval: evaluation/summary.py OpenSetSummary), repeats.csv
         (every repeat and score); ``--detector``: the unknown detector predict loads beside
         the model file (models/unknown.py); ``--plot``: AUROC and FPR95 per score.
Params:  ``openset``, ``train`` (the held-out-class heads are trained as the train stage
         trains), ``base.seed`` (library: plankton_transfer/evaluation/openset_run.py, openset.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plankton_transfer.errors import run_cli
from plankton_transfer.evaluation.openset_run import run_openset
from plankton_transfer.evaluation.summary import OpenSetSummary
from plankton_transfer.evaluation.uncertainty_plots import plot_openset
from plankton_transfer.files import atomic_path, write_csv
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.unknown import detector_path
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import named_source, params_argument, read_params, section
from plankton_transfer.params.openset import OpenSetParams
from plankton_transfer.params.train import TrainParams


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="features folder of the model's backbone")
    p.add_argument("--out-dir", type=Path, required=True, help="summary.json and repeats.csv")
    p.add_argument("--detector", type=Path, help="default: <model>.unknown.pt beside --model-file")
    p.add_argument("--plot", type=Path, required=True, help="AUROC and FPR95 per score (PNG)")
    params_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> OpenSetSummary:
    args = parse_args(argv)
    params = read_params(args.params)
    model = ModelFile.load(args.model_file)
    with named_source(params):  # a message about a setting names the params file it came from
        result = run_openset(model, args.features, section(OpenSetParams, params, "openset"),
                             section(TrainParams, params, "train"), section(BaseParams, params, "base").seed)
    with atomic_path(args.out_dir, directory=True) as folder:
        folder.mkdir()
        result.summary.save_json(folder / "summary.json")
        write_csv(folder / "repeats.csv", result.repeats)
    result.detector.save(args.detector or detector_path(args.model_file))
    s = result.summary
    plot_openset(s.scores, s.score, f"{s.model}: unknown detection, {s.repeats} repeats holding out {s.holdout} "
                                    "class(es)", args.plot)
    c = s.chosen
    print(f"openset {s.model}: {s.score} ({s.chosen_by.split(':')[0]}): AUROC {c.auroc.value:.3f} "
          f"[{c.auroc.low:.3f}, {c.auroc.high:.3f}], FPR95 {c.fpr95.value:.3f}; threshold {s.threshold:.4g} keeps "
          f"{100 * s.val_known_kept:.0f} % of the validation images")
    return s


if __name__ == "__main__":
    run_cli(main)
