"""train -> evaluate -> crossval -> compare in-process on tiny synthetic features: the model file's
temperature, the typed records between the stages, the intervals, calibration, abundance, the
headline metrics and compare.md's sections."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from plankton_transfer.evaluation.metrics import HEADLINE
from plankton_transfer.evaluation.summary import CrossvalSummary, EvaluationSummary, OpenSetSummary, RunRecord
from plankton_transfer.models.model_file import CONVERGENCE_MARGIN, ModelFile
from plankton_transfer.models.unknown import UnknownDetector
from stages import compare as compare_stage
from stages import crossval as crossval_stage
from stages import evaluate as evaluate_stage
from stages import openset as openset_stage
from stages import train as train_stage
from tests.conftest import write_params
from tests.field_data import write_feature_meta

CLASSES = ["a", "b", "c"]
SIZES = {"train": 60, "val": 15, "test": 15}


def write_model_features(folder, name: str, noise: float, dim: int = 10) -> None:
    """A features folder as the extract stage writes it, for one made-up backbone."""
    folder.mkdir(parents=True)
    centres = np.random.default_rng(7).normal(size=(3, dim)) * 2
    for i, (split, n) in enumerate(SIZES.items()):
        rng = np.random.default_rng(100 + i)  # the same images for every backbone
        y = np.arange(n) % 3
        np.save(folder / f"{split}.npy", (centres[y] + noise * rng.normal(size=(n, dim))).astype(np.float16))
        np.save(folder / f"{split}_labels.npy", y.astype(np.int64))
    write_feature_meta(folder, name, CLASSES, dim, SIZES)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool only adds hand-offs (tenfold on a busy machine)
    try:
        yield run_stages(tmp_path_factory.mktemp("uncertainty"))
    finally:
        torch.set_num_threads(threads)


def evaluate_args(root, name: str) -> list[str]:
    return ["--model-file", str(root / "models" / f"{name}.pt"), "--features", str(root / "features" / name),
            "--split-dir", str(root / "split"), "--out-dir", str(root / "evaluate" / name),
            "--plots-dir", str(root / "plots" / name), "--confusion", str(root / "conf" / f"{name}.json"),
            "--reliability", str(root / "calibration" / f"{name}.json"),
            "--review-curve", str(root / "review" / f"{name}.csv")]


def compare_args(root, out, params) -> list[str]:
    return ["--evaluations", str(root / "evaluate"), "--crossvals", str(root / "crossval"),
            "--opensets", str(root / "openset"),
            "--train-dir", str(root / "train"), "--headline", str(out / "headline.json"),
            "--out-dir", str(out / "compare"), "--plots-dir", str(out / "compare_plots"), "--curves", str(out / "curves.json"),
            "--params", str(params)]


def run_stages(root):
    split = root / "split"
    split.mkdir()
    for s, n in SIZES.items():
        y = np.arange(n) % 3
        pd.DataFrame({"path": [f"{s}/{j}.jpg" for j in range(n)], "class": [CLASSES[v] for v in y], "label": y,
                      "sample": [f"station{j % 3}" for j in range(n)], "group": ""}).to_csv(split / f"{s}.csv",
                                                                                          index=False)
    models = {"sharp": 1.0, "blurry": 4.0}
    params = write_params(root / "params.yaml", models=list(models), train={"max_epochs": 8, "lr": 0.05},
                          crossval={"folds": 3, "repeats": 1}, stats={"resamples": 500},
                          openset={"repeats": 3, "resamples": 200})
    for name, noise in models.items():
        features = root / "features" / name
        write_model_features(features, name, noise)
        train_stage.main(["--features", str(features), "--model-file", str(root / "models" / f"{name}.pt"),
                          "--live-dir", str(root / "train" / name), "--params", str(params)])
        evaluate_stage.main([*evaluate_args(root, name), "--params", str(params)])
        crossval_stage.main(["--features", str(features), "--split-dir", str(split),
                             "--out-dir", str(root / "crossval" / name),
                             "--confusion", str(root / "cvconf" / f"{name}.json"), "--params", str(params)])
        openset_stage.main(["--model-file", str(root / "models" / f"{name}.pt"), "--features", str(features),
                            "--out-dir", str(root / "openset" / name), "--plot", str(root / "openset" / f"{name}.png"),
                            "--params", str(params)])
    compare_stage.main(compare_args(root, root, params))
    return root, models


def test_the_model_file_holds_a_validation_temperature_that_every_probability_uses(pipeline):
    root, models = pipeline
    for name in models:
        model = ModelFile.load(root / "models" / f"{name}.pt")
        c = model.calibration
        assert c.val_loss_after <= c.val_loss_before and c.temperature > 0
        x = np.load(root / "features" / name / "test.npy")
        assert np.allclose(model.probabilities(x), softmax(model.logits(x) / c.temperature, axis=1), atol=1e-5)
        assert (model.probabilities(x).argmax(1) == model.probabilities(x, calibrated=False).argmax(1)).all()
        summary = EvaluationSummary.load_json(root / "evaluate" / name / "summary.json")
        assert summary.calibration.temperature == pytest.approx(c.temperature, abs=1e-4)
        assert summary.estimate("test", "loss").value == pytest.approx(summary.calibration.test_loss_after, abs=1e-4)
        predictions = pd.read_csv(root / "evaluate" / name / "predictions.csv")
        assert len(predictions) == SIZES["test"]
        assert predictions["correct"].mean() == pytest.approx(summary.estimate("test", "accuracy").value, abs=1e-4)
        run = RunRecord.load_json(root / "evaluate" / name / "run.json")
        assert run.model == name and run.model_fingerprint == summary.model_fingerprint and len(run.model_fingerprint) == 64


def test_every_interval_contains_its_estimate_and_the_ece_verdict_follows_its_interval(pipeline):
    root, models = pipeline
    for name in models:
        summary = EvaluationSummary.load_json(root / "evaluate" / name / "summary.json")
        for split in ("val", "test"):
            for key in ("accuracy", "balanced_accuracy", "macro_f1"):
                e = summary.estimate(split, key)
                assert e.low <= e.value <= e.high, (name, split, key)
        change = summary.calibration.ece_change
        verdict = "improved" if change.high < 0 else "worse" if change.low > 0 else "not distinguishable"
        assert summary.calibration.verdict == verdict


def test_compare_writes_the_headline_the_table_with_intervals_and_every_section(pipeline):
    root, models = pipeline
    text = (root / "compare" / "compare.md").read_text()
    headline = json.loads((root / "headline.json").read_text())
    assert set(headline) == set(models)
    for name in models:
        summary = EvaluationSummary.load_json(root / "evaluate" / name / "summary.json")
        assert summary.estimate("test", "accuracy").shown("accuracy") in text.split("\n## ")[0]
        cv = CrossvalSummary.load_json(root / "crossval" / name / "summary.json")
        numbers = headline[name]
        assert set(numbers) == {e.key for e in HEADLINE} | {"acc_lo", "acc_hi"}
        assert numbers["acc"] == round(summary.estimate("test", "accuracy").value, 3)
        assert numbers["cv_acc"] == round(cv.metrics["accuracy"].mean, 3)
    (pair,) = json.loads((root / "compare" / "pairs.json").read_text())
    assert pair["model_a"] == "sharp" and pair["difference"] >= 0  # the more accurate model first
    assert "sharp vs blurry: +" in text and text.count("McNemar p") == 1
    for heading in ("## Paired comparison", "## Cross-validation", "## Calibration", "## Review", "## Abundance"):
        assert heading in text
    assert "3-fold stratified cross-validation repeated 1 times over all 90 filtered images" in text
    curves = json.loads((root / "curves.json").read_text())
    assert {r["series"] for r in curves} == set(models) and {"val_loss", "train_loss", "val_accuracy"} <= set(curves[0])
    reliability = json.loads((root / "calibration" / "sharp.json").read_text())
    assert "perfectly calibrated" in {r["series"] for r in reliability}
    assert (root / "compare_plots" / "intervals.png").stat().st_size > 5000


def test_compare_shows_the_abundance_baselines_and_any_convergence_warning(pipeline):
    root, models = pipeline
    text = (root / "compare" / "compare.md").read_text()
    abundance = text.split("## Abundance")[1]
    assert "Uniform guess" in abundance and "Validation prior" in abundance
    for name in models:
        summary = EvaluationSummary.load_json(root / "evaluate" / name / "summary.json")
        a = summary.abundance
        row = next(line for line in abundance.splitlines() if line.startswith(f"| {name} |"))
        assert f"{a['uniform_error']:.3f}" in row and f"{a['classify_count_error']:.3f}" in row
        assert a["adjusted_count_used"] == ("not used" not in row)  # 3 classes, few validation images each
        if not a["adjusted_count_used"]:
            assert f"- {name}: adjusted count not used: {a['adjusted_count_reason']}" in abundance
        run = RunRecord.load_json(root / "evaluate" / name / "run.json")
        assert run.convergence_warning == summary.convergence_warning
        per_sample = {row["method"]: row for row in a["per_sample"]}  # three stations in the test split
        assert per_sample["classify_count"]["samples"] == 3
        c = per_sample["classify_count"]
        assert c["mean_mae_lo"] <= c["mean_mae"] <= c["mean_mae_hi"]
        table = pd.read_csv(root / "evaluate" / name / "abundance_per_sample.csv")
        assert sorted(table["sample"]) == ["station0", "station1", "station2"]
        assert table["classify_count"].mean() == pytest.approx(c["mean_mae"], abs=1e-3)
        row = next(line for line in text.split("### Per sample")[1].splitlines() if line.startswith(f"| {name} |"))
        assert f"{c['mean_mae']:.3f} [{c['mean_mae_lo']:.3f}, {c['mean_mae_hi']:.3f}]" in row
        training = ModelFile.load(root / "models" / f"{name}.pt").training
        if training.best_epoch > 8 - CONVERGENCE_MARGIN:  # train.max_epochs is 8 in this fixture
            assert summary.convergence_warning and summary.convergence_warning in text
        else:
            assert not summary.convergence_warning and f"{name}: best epoch" not in text


def test_the_openset_stage_writes_a_detector_for_its_model_and_compare_reports_every_score(pipeline):
    root, models = pipeline
    text = (root / "compare" / "compare.md").read_text()
    section = text.split("## Unknown organisms (open set)")[1].split("\n## ")[0]
    headline = json.loads((root / "headline.json").read_text())
    for name in models:
        summary = OpenSetSummary.load_json(root / "openset" / name / "summary.json")
        model = ModelFile.load(root / "models" / f"{name}.pt")
        detector = UnknownDetector.load_for(root / "models" / f"{name}.unknown.pt", model)
        assert detector.score == summary.score and detector.threshold == pytest.approx(summary.threshold, rel=1e-5)
        assert summary.validation_auroc[summary.score] == max(summary.validation_auroc.values())  # chosen on val
        assert headline[name]["unknown_auroc"] == round(summary.chosen.auroc.value, 3)
        for score, s in summary.scores.items():
            assert s.auroc.low <= s.auroc.value <= s.auroc.high
            assert f"| {name} | {score}{' ★' if score == summary.score else ''} | {s.auroc.value:.3f}" in section
        val = np.load(root / "features" / name / "val.npy")
        kept = (detector.unknown_scores(model, val) <= detector.threshold).mean()
        assert kept == pytest.approx(summary.val_known_kept) and kept >= 0.95
        repeats = pd.read_csv(root / "openset" / name / "repeats.csv")
        assert len(repeats) == 3 * len(summary.scores) and set(repeats["held_out"]) <= set(CLASSES)


def test_one_model_says_there_is_nothing_to_pair(pipeline, tmp_path):
    root, _ = pipeline
    params = write_params(tmp_path / "params.yaml", models=["sharp"], stats={"resamples": 500})
    compare_stage.main(compare_args(root, tmp_path, params))
    text = (tmp_path / "compare" / "compare.md").read_text()
    assert "Only 1 model: there is no pair to compare." in text
    assert json.loads((tmp_path / "compare" / "pairs.json").read_text()) == []


def test_a_record_with_an_unknown_field_or_an_older_version_is_one_line(pipeline, tmp_path):
    from plankton_transfer.errors import UserError

    root, _ = pipeline
    data = json.loads((root / "evaluate" / "sharp" / "summary.json").read_text())
    (tmp_path / "extra.json").write_text(json.dumps({**data, "accuracy_lo": 0.1}))
    with pytest.raises(UserError, match="unknown field.*accuracy_lo"):
        EvaluationSummary.load_json(tmp_path / "extra.json")
    (tmp_path / "old.json").write_text(json.dumps({**data, "version": 0}))
    with pytest.raises(UserError, match="older plankton-transfer.*version 0.*dvc repro"):
        EvaluationSummary.load_json(tmp_path / "old.json")
    (tmp_path / "meta.json").write_text(json.dumps({"backbone": "x", "classes": ["a"]}))  # 0.2's untyped meta.json
    from plankton_transfer.models.provenance import load_meta
    with pytest.raises(UserError, match="not a plankton-transfer/features file.*dvc repro"):
        load_meta(tmp_path)
