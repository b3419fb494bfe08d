"""One table of all models, in the study's columns and more."""
from __future__ import annotations

from pathlib import Path

from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.comparison_stats import uncertainty_fields
from plankton_transfer.files import read_json

STUDY_NOTE = (
    "The study (ImageNet-pretrained, frozen, 17 CPR classes, validation set): AlexNet 95.29 % / 0.1331 / "
    "47 epochs / 2803 s; VGG11 97.47 % / 0.0813 / 91 epochs / 6218 s, its time being GPU time for re-running "
    "the frozen backbone every epoch."
)


def comparison_rows(models: list[str], metrics_dir: Path, runs_dir: Path) -> list[dict]:
    """One row per model from its evaluate metrics and run record."""
    rows = []
    for name in models:
        m = read_json(metrics_dir / f"{name}.json").get(name)
        if m is None:
            raise UserError(f"{metrics_dir / f'{name}.json'} holds no metrics for {name}; run dvc repro")
        run = read_json(runs_dir / f"{name}.json")
        weights, timing = run["weights"], run["timing"]
        rows.append({
            "model": name,
            "pretrained": m["pretrained"],
            "val_accuracy": m["val"]["accuracy"],
            "val_loss": m["val"]["loss"],
            "epochs": m["epochs"],
            "total_seconds": round(timing["extract_seconds"] + timing["train_seconds"], 2),
            "test_accuracy": m["test"]["accuracy"],
            "test_top5": m["test"]["top5"],
            "test_macro_f1": m["test"]["macro_f1"],
            "parameters": m["parameters"],
            "weights": weights["description"],
            **uncertainty_fields(m),
        })
    return rows


def with_interval(row: dict, key: str) -> str:
    """``90.0 [59.6, 98.2]`` (percent), or the bare value when the metrics have no interval."""
    if f"{key}_lo" not in row:
        return f"{100 * row[key]:.2f}"
    return f"{100 * row[key]:.1f} [{100 * row[f'{key}_lo']:.1f}, {100 * row[f'{key}_hi']:.1f}]"


def markdown_table(rows: list[dict]) -> str:
    header = ("| Model | Weights | Val accuracy (%) | Cross-entropy | Epochs | Time (s) | Test accuracy (%) "
              "| Balanced accuracy (%) | Macro-F1 (%) | Top-5 (%) | Parameters |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        weights = r["weights"] if r["pretrained"] else f"**{r['weights']}**"
        lines.append(
            f"| {r['model']} | {weights} | {with_interval(r, 'val_accuracy')} | {r['val_loss']:.4f} | {r['epochs']} "
            f"| {r['total_seconds']:.1f} | {with_interval(r, 'test_accuracy')} "
            f"| {with_interval(r, 'test_balanced_accuracy')} | {with_interval(r, 'test_macro_f1')} "
            f"| {100 * r['test_top5']:.2f} | {r['parameters'] / 1e6:.1f} M |"
        )
    return "\n".join(lines) + "\n"


def report_markdown(rows: list[dict], sections: list[str] = ()) -> str:
    """The table, its notes, then ``sections`` (markdown, e.g. from comparison_stats.py)."""
    text = "# Model comparison\n\n" + markdown_table(rows)
    text += "\nTime: feature extraction (each image through the frozen backbone once) plus head training.\n"
    if not all(r["pretrained"] for r in rows):
        text += ("\n**Models marked NOT pretrained ran with randomly initialised backbones** because their ImageNet "
                 "weights were not available (see README, 'Pretrained weights'); their numbers are not comparable "
                 "with the study's.\n")
    text += f"\n{STUDY_NOTE}\n"
    return text + "".join(f"\n{section.strip()}\n" for section in sections)
