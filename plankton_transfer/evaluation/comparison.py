"""One table of all models, in the study's columns and more, and the headline numbers.

Reads each model's typed evaluation summary and run record (evaluation/summary.py) and its
cross-validation summary (evaluation/summary.py); every metric column comes from the definitions
in evaluation/metrics.py. :func:`headline` is what ``metrics/headline.json`` holds: the only
DVC metrics file, so ``dvc exp show`` stays a readable first screen.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.metrics import HEADLINE, HEADLINE_DIGITS, METRICS
from plankton_transfer.evaluation.summary import CrossvalSummary, EvaluationSummary, OpenSetSummary, RunRecord

STUDY_NOTE = (
    "The study (ImageNet-pretrained, frozen, 17 CPR classes, validation set): AlexNet 95.29 % / 0.1331 / "
    "47 epochs / 2803 s; VGG11 97.47 % / 0.0813 / 91 epochs / 6218 s, its time being GPU time for re-running "
    "the frozen backbone every epoch."
)
TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "top5")  # test columns of the main table


@dataclasses.dataclass
class ModelResults:
    name: str
    summary: EvaluationSummary
    run: RunRecord
    crossval: CrossvalSummary | None = None
    openset: OpenSetSummary | None = None

    @property
    def total_seconds(self) -> float:
        t = self.run.timing
        return round(float(t["extract_seconds"] or 0) + float(t["train_seconds"] or 0), 2)


def load_results(models: list[str], evaluations: Path, crossvals: Path | None,
                 opensets: Path | None = None, finetuned: tuple[str, ...] = ()) -> list[ModelResults]:
    """Every model's evaluation (``<evaluations>/<model>/``), cross-validation (``<crossvals>/<model>/``)
    and open-set summary (``<opensets>/<model>/``); the fine-tuned models (``finetuned``) have neither
    of the last two (their backbone learnt the train split that cross-validation and leave-classes-out
    would test on)."""
    out = []
    for name in models:
        folder = evaluations / name
        if not (folder / "summary.json").is_file():
            raise UserError(f"{folder / 'summary.json'} not found; run the evaluate stage of {name} (dvc repro)")
        frozen = name not in finetuned
        cv = CrossvalSummary.load_json(crossvals / name / "summary.json") if crossvals and frozen else None
        unknown = None
        if opensets and frozen:
            if not (opensets / name / "summary.json").is_file():
                raise UserError(f"{opensets / name / 'summary.json'} not found; run the openset stage of {name} "
                                "(dvc repro)")
            unknown = OpenSetSummary.load_json(opensets / name / "summary.json")
        out.append(ModelResults(name, EvaluationSummary.load_json(folder / "summary.json"),
                                RunRecord.load_json(folder / "run.json"), cv, unknown))
    return out


def headline(results: list[ModelResults]) -> dict[str, dict[str, float]]:
    """``metrics/headline.json``: per model, the numbers of evaluation/metrics.py HEADLINE."""
    out = {}
    for r in results:
        values: dict[str, float] = {}
        for entry in HEADLINE:
            if entry.source == "crossval":
                if r.crossval is not None:
                    values[entry.key] = round(r.crossval.metrics[entry.metric].mean, HEADLINE_DIGITS)
                continue
            if entry.source == "openset":
                if r.openset is not None:
                    values[entry.key] = round(getattr(r.openset.chosen, entry.metric).value, HEADLINE_DIGITS)
                continue
            estimate = r.summary.estimate(entry.source, entry.metric)
            values[entry.key] = round(estimate.value, HEADLINE_DIGITS)
            if entry.bounds:
                values[f"{entry.key}_lo"] = round(estimate.low, HEADLINE_DIGITS)
                values[f"{entry.key}_hi"] = round(estimate.high, HEADLINE_DIGITS)
        out[r.name] = values
    return out


def flat_row(r: ModelResults) -> dict:
    """One model's numbers as a flat row (compare.csv/json and the figures)."""
    s = r.summary
    row = {"model": r.name, "pretrained": s.pretrained, "weights": s.weights, "epochs": s.epochs,
           "best_epoch": s.best_epoch, "total_seconds": r.total_seconds, "parameters": s.parameters,
           "val_loss": s.calibration.val_loss_before}
    for split in ("val", "test"):
        for key, estimate in s.splits[split].metrics.items():
            row[f"{split}_{key}"] = estimate.value
            if estimate.low is not None:
                row[f"{split}_{key}_lo"], row[f"{split}_{key}_hi"] = estimate.low, estimate.high
    if r.crossval is not None:
        for key, value in r.crossval.metrics.items():
            row[f"cv_{key}_mean"], row[f"cv_{key}_std"] = value.mean, value.sd
    if r.openset is not None:
        chosen = r.openset.chosen
        row |= {"unknown_score": r.openset.score, "unknown_auroc": chosen.auroc.value,
                "unknown_fpr95": chosen.fpr95.value, "unknown_threshold": r.openset.threshold}
    return row


def cell(r: ModelResults, split: str, key: str) -> str:
    """An estimate with its interval; † where the interval does not contain it (the note says why)."""
    estimate = r.summary.estimate(split, key)
    return estimate.shown(key) + (" †" if estimate.note else "")


def interval_notes(results: list[ModelResults]) -> list[str]:
    return [f"{r.name}, {split}: {e.note}" for r in results for split, scores in r.summary.splits.items()
            for e in scores.metrics.values() if e.note]


def markdown_table(results: list[ModelResults]) -> str:
    test_headers = " | ".join(f"Test {METRICS[k].label} (%)" for k in TABLE_METRICS)
    lines = [f"| Model | Weights | Val accuracy (%) | Cross-entropy | Epochs | Time (s) | {test_headers} | Parameters |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(TABLE_METRICS) + "---:|"]
    for r in results:
        s = r.summary
        weights = s.weights if s.pretrained else f"**{s.weights}**"
        epochs = f"{s.epochs}" + ("" if not s.convergence_warning else " ⚠")
        tests = " | ".join(cell(r, "test", k) for k in TABLE_METRICS)
        lines.append(f"| {r.name} | {weights} | {cell(r, 'val', 'accuracy')} | {s.calibration.val_loss_before:.4f} "
                     f"| {epochs} | {r.total_seconds:.1f} | {tests} | {s.parameters / 1e6:.1f} M |")
    return "\n".join(lines) + "\n"


def report_markdown(results: list[ModelResults], sections: list[str] = ()) -> str:
    """The table, its notes, then ``sections`` (markdown, e.g. from comparison_stats.py)."""
    text = "# Model comparison\n\n" + markdown_table(results)
    text += "\nTime: feature extraction (each image through the frozen backbone once) plus head training"
    text += ("; for a fine-tuned model (-ft), fine-tuning plus extracting its features.\n"
             if any(r.run.train_params.get("trained_blocks") is not None for r in results) else ".\n")
    notes = interval_notes(results)
    if notes:
        text += "\n† The interval does not contain its estimate (it is the method's own answer, not widened): " + \
            "; ".join(notes) + ".\n"
    warnings = [r.summary.convergence_warning for r in results if r.summary.convergence_warning]
    if warnings:
        text += "\n⚠ Not converged: " + "; ".join(warnings) + ".\n"
    if not all(r.summary.pretrained for r in results):
        text += ("\n**Models marked NOT pretrained ran with randomly initialised backbones** because their ImageNet "
                 "weights were not available (docs/weights.md); their numbers are not comparable with the study's.\n")
    text += f"\n{STUDY_NOTE}\n"
    return text + "".join(f"\n{section.strip()}\n" for section in sections)
