"""End to end: `dvc repro` in a temporary git + DVC repo, on a messy folder made here."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from plankton_transfer.evaluation.summary import CrossvalSummary, EvaluationSummary, RunRecord
from tests.conftest import make_messy_dataset
from tests.pipeline_repo import commit, make_repo, run, stages_run

MODELS = ["alexnet", "vgg11", "efficientnet_lite0"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    expected = make_messy_dataset(repo / "data" / "raw", per_class=10)
    make_repo(repo, data={"raw": "data/raw"}, filter={"min_images_per_class": 5},
              extract={"batch_size": 16}, crossval={"folds": 2, "repeats": 1},  # quick: 2 heads
              openset={"repeats": 2, "resamples": 200})
    first = run(repo, "dvc", "repro")
    commit(repo, "baseline")
    return repo, expected, first


def summary(repo, name) -> EvaluationSummary:
    return EvaluationSummary.load_json(repo / "metrics" / "evaluate" / name / "summary.json")


def sizes(repo) -> dict:
    return json.loads((repo / "data" / "split_report.json").read_text())["sizes"]


def test_repro_writes_metrics_plots_and_comparison_for_every_model(repo):
    repo, expected, first = repo
    assert stages_run(first.stdout)[:2] == ["filter", "split"]
    for name in MODELS:
        s = summary(repo, name)
        for split in ("val", "test"):
            assert set(s.splits[split].metrics) == {"accuracy", "top5", "loss", "macro_f1", "balanced_accuracy"}
            assert s.splits[split].images == sizes(repo)[split]
        assert s.epochs >= s.best_epoch >= 1
        timing = RunRecord.load_json(repo / "metrics" / "evaluate" / name / "run.json").timing
        assert timing["train_seconds"] > 0 and timing["extract_images_per_s"] > 0
        assert (repo / "plots" / "evaluate" / name / "confusion.png").stat().st_size > 5000
        confusion = json.loads((repo / "plots" / "confusion" / f"{name}.json").read_text())
        assert len(confusion) == sizes(repo)["test"]
        assert (repo / "models" / f"{name}.pt").is_file()
    assert summary(repo, "efficientnet_lite0").pretrained is True
    assert summary(repo, "alexnet").pretrained is False and summary(repo, "vgg11").pretrained is False
    record = RunRecord.load_json(repo / "metrics" / "evaluate" / "alexnet" / "run.json")
    assert record.weights.description == "random init (NOT pretrained)"
    lite0 = RunRecord.load_json(repo / "metrics" / "evaluate" / "efficientnet_lite0" / "run.json").weights
    assert lite0.check == "full sha256 pinned in the registry" and len(lite0.sha256) == 64
    table = (repo / "metrics" / "compare" / "compare.md").read_text()
    assert table.count("NOT pretrained") >= 2 and "efficientnet_lite0 | ImageNet" in table
    assert (repo / "plots" / "compare" / "accuracy_vs_time.png").is_file()


def test_every_model_has_intervals_calibration_abundance_and_cross_validation(repo):
    repo, _, _ = repo
    table = (repo / "metrics" / "compare" / "compare.md").read_text()
    pairs = json.loads((repo / "metrics" / "compare" / "pairs.json").read_text())
    assert len(pairs) == 3 and table.count("McNemar p") == 3
    for name in MODELS:
        s = summary(repo, name)
        for split in ("val", "test"):
            for key in ("accuracy", "balanced_accuracy", "macro_f1"):
                e = s.estimate(split, key)
                assert e.low <= e.value <= e.high, (name, split, key)
        assert s.estimate("test", "accuracy").shown("accuracy") in table.split("\n## ")[0]  # in the main table
        c = s.calibration
        assert c.val_loss_after <= c.val_loss_before and c.temperature > 0
        assert c.test_ece_after.low <= c.test_ece_after.value <= c.test_ece_after.high
        assert {f"{m}_error" for m in ("classify_count", "adjusted_count", "uniform", "validation_prior")} <= set(s.abundance)
        cv = CrossvalSummary.load_json(repo / "metrics" / "crossval" / name / "summary.json")
        assert (cv.folds, cv.repeats) == (2, 1)
        assert f"| {name} | {cv.metrics['accuracy'].mean * 100:.1f} ± " in table
        assert (repo / "plots" / "evaluate" / name / "abundance.png").stat().st_size > 5000
    assert (repo / "plots" / "compare" / "intervals.png").stat().st_size > 5000


def test_report_names_every_rejected_and_converted_file(repo):
    repo, expected, _ = repo
    report = json.loads((repo / "data" / "filtered" / "report.json").read_text())
    assert report["format"] == "plankton-transfer/filter-report" and report["files_seen"] == expected["files_on_disk"] == sum(report["summary"].values())
    assert {r["path"] for r in report["rejected"]["files"]} == set(expected["rejected"])
    assert {c["path"] for c in report["converted"]["files"]} == expected["converted"]
    assert report["classes"]["kept"] == expected["kept_classes"]


def test_no_image_content_in_two_splits(repo):
    repo, _, _ = repo
    import pandas as pd

    hashes = [set(pd.read_csv(repo / "data" / "split" / f"{s}.csv")["sha256"]) for s in ("train", "val", "test")]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])


def test_second_repro_does_nothing(repo):
    repo, _, _ = repo
    again = run(repo, "dvc", "repro")
    assert stages_run(again.stdout) == []
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_plots_show_renders_curves_and_confusion_matrices(repo):
    repo, _, _ = repo
    data = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    for name in MODELS:
        (confusion,) = data[f"plots/confusion/{name}.json"]
        assert confusion["type"] == "vega" and confusion["content"]["data"]["values"]
        (curve,) = data[f"plots/train/{name}/plots/metrics/val/loss.tsv"]
        assert len(curve["content"]["data"]["values"]) == summary(repo, name).epochs
        for figure in ("confusion", "review", "reliability", "abundance"):
            (image,) = data[f"plots/evaluate/{name}/{figure}.png"]
            assert image["type"] == "image"
        (trade_off,) = data[f"plots/review/{name}.csv"]
        assert trade_off["type"] == "vega" and trade_off["content"]["data"]["values"]
        (reliability,) = data[f"plots/calibration/{name}.json"]
        series = {r["series"] for r in reliability["content"]["data"]["values"]}
        assert {"before (T = 1)", "perfectly calibrated"} <= series
    for plot in ("train_loss", "validation_loss", "validation_accuracy"):  # top-level: every model in one chart
        (overlay,) = data[plot]
        values = overlay["content"]["data"]["values"]
        assert {r["series"] for r in values} == set(MODELS)
        assert sum(r["series"] == "vgg11" for r in values) == summary(repo, "vgg11").epochs
    assert data["plots/compare/intervals.png"][0]["type"] == "image"


def test_changing_the_learning_rate_reruns_only_train_evaluate_crossval_openset_compare(repo):
    repo, _, _ = repo
    exp = run(repo, "dvc", "exp", "run", "-S", "train.lr=0.01")
    ran = stages_run(exp.stdout)  # crossval and openset train heads with the train stage's protocol: they run too
    stages = ("train", "evaluate", "crossval", "openset")
    assert sorted(ran) == sorted([f"{s}@{m}" for s in stages for m in MODELS] + ["compare"])
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    for name in MODELS:
        assert f'"{name}"' in text and '"acc_lo"' in text
    run(repo, "git", "checkout", "--", ".")
    run(repo, "dvc", "checkout", "-q")


def test_changing_crossval_params_reruns_only_crossval_and_compare(repo):
    repo, _, _ = repo
    exp = run(repo, "dvc", "exp", "run", "-S", "crossval.folds=3")
    try:
        assert sorted(stages_run(exp.stdout)) == sorted([f"crossval@{m}" for m in MODELS] + ["compare"])
        table = (repo / "metrics" / "compare" / "compare.md").read_text()
        assert "3-fold stratified cross-validation" in table
        for name in MODELS:
            cv = CrossvalSummary.load_json(repo / "metrics" / "crossval" / name / "summary.json")
            assert cv.folds == 3 and f"| {name} | {100 * cv.metrics['accuracy'].mean:.1f} ± " in table
    finally:
        run(repo, "git", "checkout", "--", ".")
        run(repo, "dvc", "checkout", "-q")


def test_on_missing_error_stops_before_any_compute_with_a_clear_message(repo):
    repo, _, _ = repo
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["pretrained"]["on_missing"] = "error"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        failed = run(repo, "dvc", "repro", check=False, env={"TORCH_HOME": os.environ["TORCH_HOME"]})
    finally:
        params_path.write_text(original)
        run(repo, "dvc", "checkout", "-q")  # dvc repro removed extract@alexnet's features before it failed
    assert failed.returncode != 0
    message = [line for line in failed.stderr.splitlines() if line.startswith("error: ImageNet weights for alexnet")]
    assert message, failed.stderr[-2000:]
    assert "alexnet-owt-7be5be79.pth" in message[0] and "https://download.pytorch.org/models/" in message[0]
    assert "data/pretrained/" in message[0] and "Traceback" not in failed.stderr


@pytest.mark.parametrize("name", ["alexnet", "efficientnet_lite0"])
def test_predict_on_the_folder_plus_bad_files_gives_the_evaluated_classes(repo, name, tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    from plankton_transfer.cli import predict
    from plankton_transfer.data.ecotaxa_tsv import check_upload

    repo, expected, _ = repo
    images = tmp_path / "images"
    shutil.copytree(repo / "data" / "raw", images, symlinks=True)
    (images / "Copepoda" / "added_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200)
    (images / "added.png").write_text("a table saved as .png\n")
    (images / "Copepoda" / ".added_hidden.jpg").write_bytes(b"\0")
    monkeypatch.chdir(repo)  # models/<name>.pt and params.yaml of the pipeline
    out = tmp_path / "out" / "predictions"
    table = predict.main(["--model", name, "--input", str(images), "--out", str(out), "--workers", "0"])
    table = table.set_index("id")
    test = pd.read_csv(repo / "data" / "split" / "test.csv", keep_default_na=False)
    evaluated = [row["predicted"] for row in json.loads((repo / "plots" / "confusion" / f"{name}.json").read_text())]
    assert table.loc[test["path"], "best_class"].tolist() == evaluated  # what the metrics were computed from
    flagged = table["predicted"] == "unknown"  # by the openset stage's detector, the others keep the head's class
    assert (table.loc[~flagged & (table["error"] == ""), "predicted"] == table.loc[~flagged & (table["error"] == ""),
                                                                                     "best_class"]).all()
    assert set(table.index[table["error"] != ""]) == {*expected["rejected"], "Copepoda/added_truncated.jpg",
                                                      "added.png"}
    assert not any("ipynb_checkpoints" in i or "/." in i for i in table.index)
    assert check_upload(out / "ecotaxa_predictions.zip") == []
    assert json.loads((out / "run.json").read_text())["ecotaxa_objects"] == int((table["error"] == "").sum())


def test_model_files_carry_class_thresholds_and_evaluate_draws_the_review_trade_off(repo):
    import pandas as pd

    from plankton_transfer.models.model_file import ModelFile

    repo, _, _ = repo
    split_sizes = sizes(repo)
    for name in MODELS:
        model = ModelFile.load(repo / "models" / f"{name}.pt")
        t = model.thresholds
        assert t.target_precision == 0.95 and set(t.per_class) == set(model.classes)
        assert sum(t.predicted_images.values()) == split_sizes["val"]
        assert all(v is None for v in t.per_class.values())  # a few validation images support no threshold
        table = pd.read_csv(repo / "metrics" / "evaluate" / name / "review.csv")
        assert table["accepted"].iloc[0] == split_sizes["test"] and table["auto_accepted"].is_monotonic_decreasing


def test_the_exported_model_runs_in_onnxruntime_as_in_pytorch(repo, tmp_path, monkeypatch):
    """EfficientNet-Lite0 only: exporting VGG11 and AlexNet (0.5 and 0.2 GB) would cost the suite minutes."""
    import numpy as np
    import onnxruntime
    import pandas as pd

    from plankton_transfer.cli import export
    from plankton_transfer.evaluation.metrics import METRICS
    from tests.onnx_consumer import follow_the_json

    repo, _, _ = repo
    monkeypatch.chdir(repo)
    name = "efficientnet_lite0"
    checks = export.main(["--models", name, "--out-dir", str(tmp_path), "--exporter", "torchscript"])[name]
    test = pd.read_csv(repo / "data" / "split" / "test.csv", keep_default_na=False)
    assert checks["test_images"] == len(test) and checks["onnx_max_abs_diff"] < 1e-4
    assert checks["torchscript_max_abs_diff"] < 1e-4
    folder = tmp_path / name
    description = json.loads((folder / f"{name}.json").read_text())
    images = np.stack([follow_the_json(description, repo / "data" / "raw" / p) for p in test["path"]])
    session = onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    proba = session.run(None, {"image": images})[0]
    evaluated = [row["predicted"] for row in json.loads((repo / "plots" / "confusion" / f"{name}.json").read_text())]
    assert [description["classes"][i] for i in proba.argmax(axis=1)] == evaluated
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Noctilucá" in card and "## Limits" in card and "full sha256 pinned" in card
    assert (folder / f"{name}.torchscript.pt").stat().st_size > 1_000_000
    s = summary(repo, name)  # the card shows every metric that has an interval, with it (issue 16)
    for split in ("val", "test"):
        for key, e in s.splits[split].metrics.items():
            if e.low is not None:
                m = METRICS[key]
                assert f"| {m.show(e.value)} | {m.show(e.low)} to {m.show(e.high)} |" in card, (split, key)
    assert "accuracy_lo" not in card and "belongs to another model" not in card


def leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_only_metrics_file_is_the_headline_and_it_holds_at_most_24_numbers(repo):
    repo, _, _ = repo
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    files = {path for rev in shown.values() for path in rev.get("data", {})}
    assert files == {"metrics/headline.json"}
    values = list(leaves(json.loads((repo / "metrics" / "headline.json").read_text())))
    assert len(values) <= 24 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in values)
    assert {key.split(".")[0] for key, _ in values} == set(MODELS)


def test_editing_a_params_section_extract_does_not_read_reruns_no_extract_stage(repo):
    """Each params section is its own module; extract depends on the ones it reads only."""
    repo, _, _ = repo
    read_by_extract = {"base", "core", "data", "extract", "image", "pretrained"}
    sections = sorted(p for p in (repo / "plankton_transfer" / "params").glob("*.py")
                      if p.stem not in read_by_extract | {"__init__"})
    assert {p.stem for p in sections} >= {"stats", "train", "crossval", "thresholds", "split", "every_section"}
    try:
        for path in sections:
            original = path.read_text()
            path.write_text(original + "# a comment\n")
            changed = json.loads(run(repo, "dvc", "status", "--json").stdout)
            path.write_text(original)
            assert not [s for s in changed if s.startswith("extract@")], (path.name, sorted(changed))
        entry = repo / "plankton_transfer" / "models" / "backbones" / "resnet_new.py"  # a new backbone
        entry.write_text("from plankton_transfer.models.backbones._entries import torchvision_classifier\n"
                         "BACKBONE = torchvision_classifier('resnet_new', 'resnet_new-0000.pth')\n")
        changed = json.loads(run(repo, "dvc", "status", "--json").stdout)
        assert not [s for s in changed if s.startswith("extract@")], sorted(changed)
    finally:
        run(repo, "git", "checkout", "--", ".")
        (repo / "plankton_transfer" / "models" / "backbones" / "resnet_new.py").unlink(missing_ok=True)


def test_a_weight_file_added_to_one_backbones_folder_reruns_that_backbone_only(repo):
    import shutil

    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.weights import resolve_weights
    from plankton_transfer.params.pretrained import PretrainedParams

    repo, _, _ = repo
    installed = Path(resolve_weights("efficientnet_lite0", get_backbone("efficientnet_lite0").weights,
                                     PretrainedParams()).path)
    target = repo / "data" / "pretrained" / "efficientnet_lite0" / installed.name
    shutil.copy(installed, target)
    try:
        changed = json.loads(run(repo, "dvc", "status", "--json").stdout)
        run(repo, "dvc", "repro", "--single-item", "extract@efficientnet_lite0")
        meta = json.loads((repo / "data" / "features" / "efficientnet_lite0" / "meta.json").read_text())
    finally:
        target.unlink()
        run(repo, "git", "checkout", "--", "dvc.lock")
        run(repo, "dvc", "checkout", "-q")
    assert sorted(changed) == ["extract@efficientnet_lite0"], changed
    assert meta["weights"]["source"] == "project folder" and meta["weights"]["pretrained"] is True
