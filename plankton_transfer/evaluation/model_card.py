"""A model card per exported model (markdown): what it was trained on, how well it does, where
its weights come from, what it is for and where it fails.

Metrics come from the evaluate stage's JSON as they are; an interval is shown beside a metric
where the JSON has one (``<metric>_ci: [low, high]``, or ``{"value", "low", "high"}``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def interval(value) -> str:
    if isinstance(value, dict) and {"low", "high"} <= set(value):
        return f"{number(value['low'])} to {number(value['high'])}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{number(value[0])} to {number(value[1])}"
    return ""


def metrics_table(metrics: dict) -> str:
    """Rows: each number of the val and test splits, with its interval where there is one."""
    lines = ["| split | metric | value | interval |", "|---|---|---|---|"]
    for split in ("val", "test"):
        values = metrics.get(split, {})
        for key, value in values.items():
            if key.endswith("_ci"):
                continue
            shown = number(value.get("value")) if isinstance(value, dict) else number(value)
            lines.append(f"| {split} | {key} | {shown} | {interval(values.get(f'{key}_ci', value))} |")
    return "\n".join(lines)


def per_class_section(per_class: pd.DataFrame | None) -> str:
    """The evaluate stage's per-class precision, recall and F1 on the test split."""
    if per_class is None or per_class.empty:
        return ""
    lines = ["", "Per class, on the test split:", "", "| class | precision | recall | F1 | images |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {int(r['support'])} |"
              for _, r in per_class.iterrows()]
    return "\n".join(lines)


def data_section(counts: pd.DataFrame, report: dict) -> str:
    """Where the images came from and how many of each class each split holds."""
    table = counts.copy()
    table["total"] = table.sum(axis=1)
    header = "| class | " + " | ".join(table.columns) + " |"
    rows = [header, "|" + "---|" * (len(table.columns) + 1)]
    rows += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |" for name, row in table.iterrows()]
    rows.append("| **all** | " + " | ".join(str(int(v)) for v in table.sum(axis=0)) + " |")
    source = (f"`{report.get('source', '?')}` ({report.get('layout', '?')}): {report.get('files_seen', '?')} files "
              f"seen, {report.get('summary', {}).get('kept', '?')} images kept after validation, duplicate and "
              "class rules (details in data/filtered/report.json)") if report else "not recorded"
    return f"Source: {source}.\n\n" + "\n".join(rows)


def thresholds_section(record: dict, coverage: pd.DataFrame | None) -> str:
    thresholds = record.get("thresholds")
    if not thresholds:
        return "The model file has no class thresholds (trained before they existed): every image needs review."
    lines = [f"Per class, the lowest probability at which the validation images predicted as that class reach "
             f"precision {thresholds['target_precision']:g}; images under it are flagged `needs_review`. "
             "\"none\": never reached (or never predicted on validation): every image of that class is flagged.",
             "", "| class | threshold | validation images it rests on |", "|---|---|---|"]
    for name in record["classes"]:
        value = thresholds["per_class"].get(name)
        lines.append(f"| {name} | {'none' if value is None else f'{value:.4f}'} | "
                     f"{thresholds.get('val_predictions', {}).get(name, '?')} |")
    if coverage is not None and len(coverage):
        target = thresholds["target_precision"]
        reached = coverage[coverage["accuracy"] >= target]
        lines.append("")
        lines.append(f"On the test set, a global threshold of {reached['threshold'].iat[0]:g} accepts "
                     f"{reached['auto_accepted'].iat[0]:.0%} of the images automatically at accuracy "
                     f"{reached['accuracy'].iat[0]:.2%}; a person checks the rest (table: "
                     f"metrics/thresholds/{record['backbone']}.csv)." if len(reached) else
                     f"On the test set, no global threshold gives accuracy {target:g}: check every image.")
    return "\n".join(lines)


def model_card(record: dict, metrics: dict, counts: pd.DataFrame, report: dict, coverage: pd.DataFrame | None,
               files: dict[str, str], per_class: pd.DataFrame | None = None) -> str:
    """The card's markdown text."""
    w, t, name = record["weights"], record["training"], record["backbone"]
    n_classes = len(record["classes"])
    smallest = int(np.min(counts.sum(axis=1))) if len(counts) else 0
    return "\n".join([
        f"# Model card: {name} plankton classifier ({n_classes} classes)", "",
        "## Model", "",
        f"- Frozen ImageNet **{name}** feature extractor ({record['feature_dim']}-d features) and a trained linear "
        f"layer over {n_classes} classes, softmax; trained by the plankton-transfer pipeline (SGD lr {t['lr']}, "
        f"{t['epochs']} epochs, best epoch {t['best_epoch']}, seed {t['seed']}).",
        f"- Backbone weights: {w['description']}" + (f", file `{w.get('file')}`, sha256 `{w['sha256']}` "
                                                      f"({w.get('check', '')})" if w["pretrained"] else
                                                      " (seeded random initialisation: features carry no ImageNet "
                                                      "knowledge; expect poor accuracy)") + ".",
        f"- Input: preprocessing `{record['preprocess']['mode']}` at {record['preprocess']['input_size']} px "
        "(see the JSON beside this card).", "",
        "## Data", "", data_section(counts, report), "",
        "## Metrics", "", metrics_table(metrics) if metrics else "No metrics found (run the evaluate stage).",
        per_class_section(per_class), "",
        "## Thresholds and review", "", thresholds_section(record, coverage), "",
        "## Intended use", "",
        f"Sorting new images from the same instrument, sample type and processing as the training data into these "
        f"{n_classes} classes, with a person checking the images flagged `needs_review` (plankton-predict writes "
        "an EcoTaxa table for that). Report counts per class only after that review, or with the per-class "
        "precision and recall above in mind.", "",
        "## Limits", "",
        f"- Closed set: an organism of a class it never saw, detritus or a bubble is forced into one of the "
        f"{n_classes} classes (often with a high probability).",
        "- Another instrument, magnification, camera, background or segmentation changes the images: check the "
        "accuracy on a labelled sample of the new data before trusting it.",
        f"- The smallest class has {smallest} images; metrics and thresholds from small validation and test sets "
        "are rough (see the interval column where given).",
        "- Class proportions in new samples differ from the training set's; probabilities are not abundance "
        "estimates.", "",
        "## Files", "", *[f"- `{file}`: {what}" for file, what in files.items()], "",
    ])
