"""A model card per exported model (markdown): what it was trained on, how well it does, where
its weights come from, what it is for and where it fails.

Everything about the model comes from the model file itself (its data, classes, counts,
training and thresholds). Metrics come from the evaluate stage's summary only when that
summary was computed for this very model file (same sha256); otherwise the card says so
instead of showing another model's numbers. Each metric is shown with its interval, as
evaluation/metrics.py defines them.
"""
from __future__ import annotations

import pandas as pd

from plankton_transfer.evaluation.metrics import METRICS
from plankton_transfer.evaluation.summary import EvaluationSummary
from plankton_transfer.models.model_file import ModelFile


def metrics_table(summary: EvaluationSummary) -> str:
    """Rows: each metric of the val and test splits, its value and its interval."""
    lines = [f"| split | metric | value | {100 * summary.confidence:g} % interval |", "|---|---|---|---|"]
    for split in ("val", "test"):
        for key, estimate in summary.splits[split].metrics.items():
            metric = METRICS[key]
            value = metric.show(estimate.value)
            interval = "" if estimate.low is None else metric.show(estimate.low) + " to " + metric.show(estimate.high)
            lines.append(f"| {split} ({summary.splits[split].images} images) | {metric.label}"
                         f"{' (%)' if metric.percent else ''} | {value} | {interval} |")
    c = summary.calibration
    lines.append(f"| test | expected calibration error | {c.test_ece_after.value:.3f} | {c.test_ece_after.low:.3f} to "
                 f"{c.test_ece_after.high:.3f} |")
    return "\n".join(lines) + (f"\n\nTemperature scaling (T = {c.temperature:.3f}, fitted on validation): test ECE "
                               f"{c.test_ece_before.value:.3f} -> {c.test_ece_after.value:.3f}, {c.verdict}. "
                               f"Intervals: {summary.splits['test'].interval_method} (docs/coverage.md).")


def per_class_section(per_class: pd.DataFrame | None) -> str:
    """The evaluate stage's per-class precision, recall and F1 on the test split."""
    if per_class is None or per_class.empty:
        return ""
    lines = ["", "Per class, on the test split:", "", "| class | precision | recall | F1 | images |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {int(r['support'])} |"
              for _, r in per_class.iterrows()]
    return "\n".join(lines)


def data_section(model: ModelFile) -> str:
    """Where the images came from and how many of each class each split held, from the model file."""
    counts = pd.DataFrame(model.data.class_counts).reindex(list(model.classes)).fillna(0).astype(int)
    counts["total"] = counts.sum(axis=1)
    rows = ["| class | " + " | ".join(counts.columns) + " |", "|" + "---|" * (len(counts.columns) + 1)]
    rows += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |" for name, row in counts.iterrows()]
    rows.append("| **all** | " + " | ".join(str(int(v)) for v in counts.sum(axis=0)) + " |")
    return (f"Source: `{model.data.source}`; split fingerprint `{model.data.split_sha256[:16]}` (the same split gives "
            "the same fingerprint).\n\n" + "\n".join(rows))


def thresholds_section(model: ModelFile, summary: EvaluationSummary | None) -> str:
    t = model.thresholds
    lines = [f"Per class, the lowest probability at which the validation images predicted as that class reach "
             f"precision {t.target_precision:g} with support: {t.rule}. Images under it, and every image of a class "
             "without one (\"none\"), are flagged `needs_review` with the reason.", "",
             "| class | threshold | validation images at or above it (correct) | predicted as the class |",
             "|---|---|---|---|"]
    for name in model.classes:
        value = t.per_class.get(name)
        lines.append(f"| {name} | {'none (always reviewed)' if value is None else f'{value:.4f}'} | "
                     f"{t.accepted_images.get(name, 0)} ({t.correct_images.get(name, 0)}) | "
                     f"{t.predicted_images.get(name, 0)} |")
    test = next((r for r in summary.review if r.split == "test"), None) if summary else None
    if test is not None:
        lines.append("")
        if test.precision is None:
            lines.append(f"On the test split, no image is accepted automatically: a person checks all {test.images}.")
        else:
            p = test.precision
            lines.append(f"On the test split, {test.accepted} of {test.images} images are accepted automatically, "
                         f"{100 * p.value:.1f} % correct [{100 * p.low:.1f}, {100 * p.high:.1f}].")
    return "\n".join(lines)


def model_card(model: ModelFile, files: dict[str, str], summary: EvaluationSummary | None,
               summary_note: str = "", per_class: pd.DataFrame | None = None) -> str:
    """The card's markdown text; ``summary``: this model file's evaluation (None with ``summary_note``)."""
    w, t = model.weights, model.training
    n_classes = len(model.classes)
    smallest = min(sum(counts.get(c, 0) for counts in model.data.class_counts.values()) for c in model.classes)
    kind = "fine-tuned" if model.backbone_state is not None else "frozen ImageNet"
    metrics = (metrics_table(summary) + per_class_section(per_class)) if summary else summary_note
    return "\n".join([
        f"# Model card: {model.name} plankton classifier ({n_classes} classes)", "",
        "## Model", "",
        f"- A {kind} **{model.backbone}** feature extractor ({model.feature_dim}-d features) and a trained linear "
        f"layer over {n_classes} classes, softmax; trained by the plankton-transfer pipeline (SGD lr {t.lr}, "
        f"{t.epochs} epochs, best epoch {t.best_epoch}, seed {t.seed})."
        + ("" if t.converged else f" **Warning:** {t.convergence_warning(model.name)}."),
        f"- Backbone weights: {w.description}" + (f", file `{w.file}`, sha256 `{w.sha256}` ({w.check})"
                                                  if w.pretrained else
                                                  " (seeded random initialisation: features carry no ImageNet "
                                                  "knowledge; expect poor accuracy; every image is flagged for "
                                                  "review)") + ".",
        f"- Input: preprocessing `{model.input.mode}` at {model.input.preprocess.input_size} px; the JSON beside this "
        "card states every step.", "",
        "## Data", "", data_section(model), "",
        "## Metrics", "", metrics, "",
        "## Thresholds and review", "", thresholds_section(model, summary), "",
        "## Intended use", "",
        f"Sorting new images from the same instrument, sample type and processing as the training data into these "
        f"{n_classes} classes, with a person checking the images flagged `needs_review` (plankton-predict writes "
        "an EcoTaxa upload for that). Report counts per class only after that review, or with the per-class "
        "precision and recall above in mind.", "",
        "## Limits", "",
        f"- Closed set: an organism of a class it never saw, detritus or a bubble is forced into one of the "
        f"{n_classes} classes (often with a high probability).",
        "- Another instrument, magnification, camera, background or segmentation changes the images: check the "
        "accuracy on a labelled sample of the new data before trusting it.",
        f"- The smallest class has {smallest} images; metrics and thresholds from small validation and test sets "
        "are rough (see the intervals).",
        "- Class proportions in new samples differ from the training set's; probabilities are not abundance "
        "estimates.", "",
        "## Files", "", *[f"- `{file}`: {what}" for file, what in files.items()], "",
    ])
