"""The comparison's numbers a scientist can defend: paired tests, cross-validation, calibration,
abundance and the review trade-off, as markdown sections of compare.md (from the typed
results of evaluation/comparison.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.comparison import ModelResults
from plankton_transfer.evaluation.metrics import CROSSVAL_METRICS, METRICS
from plankton_transfer.evaluation.paired import compare_pairs, pair_sentence
from plankton_transfer.files import read_json
from plankton_transfer.params.stats import StatsParams

def read_predictions(models: list[str], evaluations: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every model's test predictions, checked to be on the same images in the same order."""
    frames = {}
    for name in models:
        path = evaluations / name / "predictions.csv"
        if not path.is_file():
            raise UserError(f"{path} not found; run the evaluate stage first (dvc repro)")
        frames[name] = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "true": str, "predicted": str})
    first = frames[models[0]]
    for name, frame in frames.items():
        if frame["path"].tolist() != first["path"].tolist():
            raise UserError(f"{name} and {models[0]} were tested on different images; re-run dvc repro so that "
                            "every model is evaluated on the same split")
    classes = sorted(set(first["true"]).union(*(set(f["predicted"]) for f in frames.values())))
    code = {c: i for i, c in enumerate(classes)}
    y_true = first["true"].map(code).to_numpy()
    return y_true, {name: frame["predicted"].map(code).to_numpy() for name, frame in frames.items()}


def pair_rows(models: list[str], evaluations: Path, cfg: StatsParams, seed: int) -> list[dict]:
    if len(models) < 2:
        return []
    y_true, predictions = read_predictions(models, evaluations)
    rows = compare_pairs(y_true, predictions, cfg.confidence, cfg.resamples, seed)
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def intervals_note(cfg: StatsParams, seed: int) -> str:
    draws = f"{cfg.resamples} draws, seed {seed}"
    simulated = {
        "bootstrap": (f"the stratified bootstrap (each class's test images resampled within the class; {cfg.resamples} "
                      f"resamples, seed {seed}), which cannot vary a class with one test image"),
        "posterior": ("central interval of each class's confusion rates drawn from their own posterior given its test "
                      f"images (Dirichlet, Jeffreys prior; {draws})"),
        "pooled": ("central interval of posterior draws in which each class's recall is partially pooled with the "
                   f"other classes' (hierarchical Beta-binomial; {draws})"),
        "pooled-pivot": ("the observed value minus the quantiles of its error in test sets simulated from the pooled "
                         f"(hierarchical Beta-binomial) posterior ({draws})"),
        "auto": ("central interval of posterior draws in which each class's recall is partially pooled with the "
                 "other classes' (hierarchical Beta-binomial); macro-F1 of a long tail of class sizes by a pivot on "
                 f"that model; chosen by the coverage measured in docs/coverage.md ({draws}; each model's summary "
                 "names the method used per split)"),
    }[cfg.interval_method]
    return (f"Intervals: {100 * cfg.confidence:g} %. Accuracy: Wilson score interval. Balanced accuracy and "
            f"macro-F1: {simulated} (stats.interval_method). An interval is never widened to hold its estimate; "
            "where one misses it, the summary notes why. Cross-entropy: the head's validation cross-entropy before "
            "temperature scaling, as the study reports it.")


def pairs_section(pairs: list[dict], cfg: StatsParams, n_models: int) -> str:
    text = "## Paired comparison on the same test images\n\n"
    if not pairs:
        return text + f"Only {n_models} model: there is no pair to compare.\n"
    text += "".join(f"- {pair_sentence(row, cfg.confidence)}\n" for row in pairs)
    return text + (f"\nPoints: difference in test accuracy, with a paired bootstrap interval (test images drawn "
                   f"with replacement, both models scored on the same draws; {cfg.resamples} resamples). "
                   "p: exact McNemar test "
                   f"(statsmodels) on the images exactly one of the two got right; not corrected for the "
                   f"{len(pairs)} comparisons (Bonferroni: multiply by {len(pairs)}).\n")


NOT_CROSSVALIDATED = ("Not cross-validated: {names}. A fine-tuned backbone was trained on the train split, which "
                      "every fold's test part would share, so the folds would score images the network learnt; its "
                      "honest comparison is the paired test on the untouched test split above.")


def crossval_section(results: list[ModelResults]) -> str:
    cv = [r for r in results if r.crossval is not None]
    skipped = [r.name for r in results if r.crossval is None]
    note = f"\n{NOT_CROSSVALIDATED.format(names=', '.join(skipped))}\n" if skipped else ""
    if not cv:
        return f"## Cross-validation on the cached features\n{note}" if skipped else ""
    first = cv[0].crossval
    text = (f"## Cross-validation on the cached features\n\n{first.folds}-fold stratified cross-validation "
            f"repeated {first.repeats} times over all {first.images} filtered images; in each fold the head is "
            "trained with the train stage's protocol, early-stopped on a part of the fold's training images, never "
            "its test part.\n\n| Model | " + " | ".join(f"{METRICS[k].label}{' (%)' if METRICS[k].percent else ''}"
                                                    for k in CROSSVAL_METRICS) + " |\n|---|" + "---:|" * len(CROSSVAL_METRICS) + "\n")
    for r in cv:
        cells = []
        for key in CROSSVAL_METRICS:
            m, v = METRICS[key], r.crossval.metrics[key]
            cells.append(f"{m.show(v.mean)} ± {m.show(v.sd)}")
        text += f"| {r.name} | " + " | ".join(cells) + " |\n"
    return text + ("\nMean ± standard deviation over the folds. Folds share training images, so the standard "
                   "deviation understates the uncertainty of the mean. Per-fold numbers: "
                   "`metrics/crossval/<model>/folds.csv`; out-of-fold confusion matrices: `plots/crossval/`.\n") + note


def calibration_section(results: list[ModelResults], cfg: StatsParams) -> str:
    text = ("## Calibration\n\nTemperature scaling fitted on the validation split; the probabilities everywhere "
            f"(metrics, misclassified, predictions, `plankton-predict`) are scaled. ECE: {cfg.calibration_bins} "
            f"equal-width confidence bins, test split, with {100 * cfg.confidence:g} % bootstrap intervals; the "
            "verdict reads the interval of the change (after - before): improved or worse only when it excludes 0.\n\n"
            "| Model | Temperature | Test ECE before | Test ECE after | Change | Verdict | Test cross-entropy before → after |\n"
            "|---|---:|---:|---:|---:|---|---:|\n")
    for r in results:
        c = r.summary.calibration
        b, a, d = c.test_ece_before, c.test_ece_after, c.ece_change
        text += (f"| {r.name} | {c.temperature:.3f} | {b.value:.3f} [{b.low:.3f}, {b.high:.3f}] | {a.value:.3f} "
                 f"[{a.low:.3f}, {a.high:.3f}] | {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {c.verdict} | "
                 f"{c.test_loss_before:.4f} → {c.test_loss_after:.4f} |\n")
    return text + "\nReliability diagrams: `plots/evaluate/<model>/reliability.png`.\n"


def review_section(results: list[ModelResults]) -> str:
    text = ("## Review: images accepted without a person\n\nUnder each model's per-class thresholds (chosen on the "
            "validation split, only where enough validation images support the target precision: "
            "models/thresholds.py), the images accepted automatically and how many of them are right, with a Wilson "
            "interval. The validation row is where the thresholds were chosen (optimistic); the test row is the "
            "honest one.\n\n| Model | Split | Accepted | Precision of the accepted (%) | Classes always reviewed |\n"
            "|---|---|---:|---:|---:|\n")
    for r in results:
        for review in r.summary.review:
            p = review.precision
            shown = "-" if p is None else f"{100 * p.value:.1f} [{100 * p.low:.1f}, {100 * p.high:.1f}]"
            text += (f"| {r.name} | {review.split} | {review.accepted} of {review.images} | {shown} | "
                     f"{len(review.classes_without_threshold)} |\n")
    return text


def interval(e, digits: int = 3) -> str:
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def openset_section(results: list[ModelResults]) -> str:
    """Leave-classes-out: how well each unknown score flags classes the head never saw."""
    done = [r for r in results if r.openset is not None]
    if not done:
        return ""
    first = done[0].openset
    text = ("## Unknown organisms (open set)\n\nNo real unknown taxa are at hand, so known classes play them "
            f"(leave-classes-out, evaluation/openset.py): {first.repeats} repeats, each holding out {first.holdout} "
            "class(es); a head trained on the rest scores the known classes' test images against every image of the "
            "held-out classes. Unknown is the positive class. AUROC: 1 separates them perfectly, 0.5 is chance; "
            "FPR95: the share of unknown images kept as known when 95 % of the known are kept (lower is better); "
            "Bray-Curtis: how far the predicted composition of those images is from the true one (the held-out "
            "images' true class is unknown), forced into known classes against rejected at the validation "
            "threshold. Mean over repeats, with a two-level bootstrap interval (repeats, then images). The score "
            "predict uses is chosen on validation data only; ★ marks it.\n\n"
            "| Model | Score | AUROC | FPR95 | AUPR | Unknown rejected | Known kept | Bray-Curtis forced → rejected |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|\n")
    for r in done:
        o = r.openset
        for name, s in o.scores.items():
            mark = " ★" if name == o.score else ""
            text += (f"| {r.name} | {name}{mark} | {interval(s.auroc)} | {interval(s.fpr95)} | {s.aupr.value:.3f} | "
                     f"{100 * s.unknown_rejected.value:.0f} % | {100 * s.known_kept.value:.0f} % | "
                     f"{o.bray_curtis_forced.value:.3f} → {s.bray_curtis_rejected.value:.3f} |\n")
    text += "\n" + "\n".join(
        f"- {r.name}: predict uses {r.openset.score} ({r.openset.chosen_by}); threshold {r.openset.threshold:.4g} keeps "
        f"{100 * r.openset.val_known_kept:.0f} % of the model's validation images; about {r.openset.known_images} "
        f"known and {r.openset.unknown_images} unknown images per repeat." for r in done)
    return text + "\n\nFigures: `plots/openset/<model>.png`.\n"


ABUNDANCE_COLUMNS = (("classify_count", "Classify and count"), ("adjusted_count", "Adjusted count"),
                     ("probabilistic_count", "Probabilistic count"), ("em", "EM"),
                     ("uniform", "Uniform guess"), ("validation_prior", "Validation prior"))


def abundance_error(summary: dict, method: str) -> str:
    value = summary.get(f"{method}_error")
    return "not used" if value is None else f"{value:.3f}"


def abundance_section(results: list[ModelResults], evaluations: Path) -> str:
    text = ("## Abundance (test split)\n\nThe test split's class proportions estimated by each method "
            "(evaluation/abundance.py), beside two baselines that look at no test image: a uniform guess (1/C per "
            "class) and the validation split's proportions. Error: total absolute proportion error (half the sum of "
            "absolute differences of class proportions; 0 is exact, lower is better). The split is stratified, so "
            "the validation prior matches the test composition by construction and is hard to beat here; on new "
            "samples, whose composition differs, it is only a guess. The adjusted count is used only when the "
            "validation split supports it: at least 10 validation images of every class the test predictions use "
            "and validation confusion rates with a condition number of at most 10.\n\n| Model | "
            + " | ".join(label for _, label in ABUNDANCE_COLUMNS) + " |\n|---|" + "---:|" * len(ABUNDANCE_COLUMNS) + "\n")
    notes = []
    for r in results:
        a = r.summary.abundance
        text += f"| {r.name} | " + " | ".join(abundance_error(a, m) for m, _ in ABUNDANCE_COLUMNS) + " |\n"
        if not a["adjusted_count_used"]:
            notes.append(f"- {r.name}: adjusted count not used: {a['adjusted_count_reason']}.")
        if a["classify_count_error"] > a["uniform_error"]:
            notes.append(f"- {r.name}: classify and count is further from the truth than a uniform guess "
                         f"({a['classify_count_error']:.3f} against {a['uniform_error']:.3f}); do not use its counts.")
    text += ("\n" + "\n".join(notes) + "\n") if notes else ""
    tables = {r.name: pd.read_csv(evaluations / r.name / "abundance.csv", keep_default_na=False) for r in results}
    first = next(iter(tables.values()))
    text += ("\nPer class, in % of the test images (classify and count; adjusted where used):\n\n| Class | True | "
             + " | ".join(f"{m} counted | {m} adjusted" for m in tables) + " |\n|---|---:|" + "---:|---:|" * len(tables)
             + "\n")
    for i, row in first.iterrows():
        cells = " | ".join(f"{100 * t.loc[i, 'classify_count']:.1f} | {percent(t.loc[i, 'adjusted_count'])}"
                           for t in tables.values())
        text += f"| {row['class']} | {100 * row['true']:.1f} | {cells} |\n"
    return text + per_sample_section(results) + "\nBar charts: `plots/evaluate/<model>/abundance.png`.\n"


def per_sample_section(results: list[ModelResults]) -> str:
    """Abundance judged per sample (González et al. 2017): each test sample's composition
    estimated from its own images; where the samples are known (EcoTaxa sample_id, split.group)."""
    done = [r for r in results if r.summary.abundance.get("per_sample")]
    if not done:
        return ("\nPer sample: the test images' samples are not known (EcoTaxa sample_id, or a split.group pattern "
                "such as an IFCB bin id), so abundance is judged on the test split as one sample only.\n")
    text = ("\n### Per sample\n\nEach test sample's composition estimated from its own images; error: the mean "
            "absolute difference of class proportions over the classes (MAE), averaged over the samples, with a "
            "bootstrap interval over samples.\n\n| Model | Samples | "
            + " | ".join(label for _, label in ABUNDANCE_COLUMNS) + " |\n|---|---:|" + "---:|" * len(ABUNDANCE_COLUMNS)
            + "\n")
    for r in done:
        rows = {row["method"]: row for row in r.summary.abundance["per_sample"]}
        cells = []
        for method, _ in ABUNDANCE_COLUMNS:
            row = rows.get(method)
            cells.append("not used" if row is None or not row["used"] or row["mean_mae"] is None else
                         f"{row['mean_mae']:.3f} [{row['mean_mae_lo']:.3f}, {row['mean_mae_hi']:.3f}]")
        samples = next(iter(rows.values()))["samples"]
        text += f"| {r.name} | {samples} | " + " | ".join(cells) + " |\n"
    return text


def percent(value) -> str:
    return "-" if value == "" or pd.isna(value) else f"{100 * float(value):.1f}"


CURVES = {"train_loss": ("train", "loss"), "val_loss": ("val", "loss"), "train_accuracy": ("train", "accuracy"),
          "val_accuracy": ("val", "accuracy")}


def training_curves(models: list[str], train_dir: Path) -> list[dict]:
    """Every model's per-epoch curves in one table (rows: series = model, step, train/val loss and
    accuracy), read from the train stages' DVCLive files
    (``<train_dir>/<model>/plots/metrics/<split>/<metric>.tsv``), for the overlaid DVC plots."""
    rows = []
    for name in models:
        columns = {}
        for key, (split, metric) in CURVES.items():
            path = train_dir / name / "plots" / "metrics" / split / f"{metric}.tsv"
            if not path.is_file():
                raise UserError(f"{path} not found; run the train stage first (dvc repro)")
            columns[key] = pd.read_csv(path, sep="\t").set_index("step")[metric]
        frame = pd.DataFrame(columns).reset_index()
        rows += [{"series": name, "step": int(r["step"]), **{k: round(float(r[k]), 6) for k in CURVES}}
                 for _, r in frame.iterrows()]
    return rows
