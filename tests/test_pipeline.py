"""End to end: `dvc repro` in a temporary git + DVC repo, on a messy folder made here."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_messy_dataset
from tests.pipeline_repo import commit, make_repo, run, stages_run

MODELS = ["alexnet", "vgg11", "efficientnet_lite0"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    expected = make_messy_dataset(repo / "data" / "raw", per_class=10)
    make_repo(repo, data={"raw": "data/raw"}, filter={"min_images_per_class": 5, "workers": 1},
              extract={"batch_size": 16}, crossval={"folds": 2, "repeats": 1})  # quick: 2 heads
    first = run(repo, "dvc", "repro")
    commit(repo, "baseline")
    return repo, expected, first


def metrics(repo, name):
    return json.loads((repo / "metrics" / "evaluate" / f"{name}.json").read_text())[name]


def test_repro_writes_metrics_plots_and_comparison_for_every_model(repo):
    repo, expected, first = repo
    assert stages_run(first.stdout)[:2] == ["filter", "split"]
    for name in MODELS:
        m = metrics(repo, name)
        for split in ("val", "test"):
            assert set(m[split]) == {"accuracy", "top5", "loss", "macro_f1", "balanced_accuracy",
                                     *(f"{k}_{end}" for k in ("accuracy", "balanced_accuracy", "macro_f1")
                                       for end in ("lo", "hi"))}
        assert m["epochs"] >= m["best_epoch"] >= 1
        timing = json.loads((repo / "metrics" / "runs" / f"{name}.json").read_text())["timing"]
        assert timing["train_seconds"] > 0 and timing["extract_images_per_s"] > 0
        assert (repo / "plots" / "evaluate" / f"{name}_confusion_test.png").stat().st_size > 5000
        confusion = json.loads((repo / "plots" / "confusion" / f"{name}.json").read_text())
        assert len(confusion) == json.loads((repo / "metrics" / "split.json").read_text())["sizes"]["test"]
        assert (repo / "models" / f"{name}.pt").is_file()
    assert metrics(repo, "efficientnet_lite0")["pretrained"] is True
    assert metrics(repo, "alexnet")["pretrained"] is False and metrics(repo, "vgg11")["pretrained"] is False
    record = json.loads((repo / "metrics" / "runs" / "alexnet.json").read_text())
    assert record["weights"]["description"] == "random init (NOT pretrained)"
    lite0 = json.loads((repo / "metrics" / "runs" / "efficientnet_lite0.json").read_text())["weights"]
    assert lite0["check"] == "full sha256 pinned in the registry" and len(lite0["sha256"]) == 64
    table = (repo / "metrics" / "compare" / "compare.md").read_text()
    assert table.count("NOT pretrained") >= 2 and "efficientnet_lite0 | ImageNet" in table
    assert (repo / "plots" / "compare" / "accuracy_vs_time.png").is_file()


def test_every_model_has_intervals_calibration_abundance_and_cross_validation(repo):
    repo, _, _ = repo
    table = (repo / "metrics" / "compare" / "compare.md").read_text()
    pairs = json.loads((repo / "metrics" / "compare" / "pairs.json").read_text())
    assert len(pairs) == 3 and table.count("McNemar p") == 3
    for name in MODELS:
        m = metrics(repo, name)
        for split in ("val", "test"):
            for key in ("accuracy", "balanced_accuracy", "macro_f1"):
                assert m[split][f"{key}_lo"] <= m[split][key] <= m[split][f"{key}_hi"], (name, split, key)
        shown = f"{100 * m['test']['accuracy']:.1f} [{100 * m['test']['accuracy_lo']:.1f}, " \
                f"{100 * m['test']['accuracy_hi']:.1f}]"
        assert shown in table.split("\n## ")[0]  # in the main table
        c = m["calibration"]
        assert c["val_loss_after"] <= c["val_loss_before"] and c["temperature"] > 0
        assert {"test_ece_before", "test_ece_after", "test_loss_before", "test_loss_after"} <= set(c)
        assert set(m["abundance"]) == {"classify_count_error", "adjusted_count_error"}
        cv = json.loads((repo / "metrics" / "crossval" / f"{name}.json").read_text())[name]["crossval"]
        assert (cv["folds"], cv["repeats"]) == (2, 1)
        assert f"| {name} | {100 * cv['accuracy_mean']:.1f} ± " in table
        assert (repo / "plots" / "abundance" / f"{name}.png").stat().st_size > 5000
    assert (repo / "plots" / "compare" / "intervals.png").stat().st_size > 5000


def test_report_names_every_rejected_and_converted_file(repo):
    repo, expected, _ = repo
    report = json.loads((repo / "data" / "filtered" / "report.json").read_text())
    assert report["files_seen"] == expected["files_on_disk"] == sum(report["summary"].values())
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
        assert len(curve["content"]["data"]["values"]) == metrics(repo, name)["epochs"]
        (image,) = data[f"plots/evaluate/{name}_confusion_test.png"]
        assert image["type"] == "image"
        (trade_off,) = data[f"metrics/thresholds/{name}.csv"]
        assert trade_off["type"] == "vega" and trade_off["content"]["data"]["values"]
        (reliability,) = data[f"plots/calibration/{name}.json"]
        series = {r["series"] for r in reliability["content"]["data"]["values"]}
        assert {"before (T = 1)", "perfectly calibrated"} <= series
        assert data[f"plots/calibration/{name}_reliability.png"][0]["type"] == "image"
    for plot in ("train_loss", "validation_loss", "validation_accuracy"):  # top-level: every model in one chart
        (overlay,) = data[plot]
        values = overlay["content"]["data"]["values"]
        assert {r["series"] for r in values} == set(MODELS)
        assert sum(r["series"] == "vgg11" for r in values) == metrics(repo, "vgg11")["epochs"]
    assert data["plots/compare/intervals.png"][0]["type"] == "image"


def test_changing_the_learning_rate_reruns_only_train_evaluate_crossval_compare(repo):
    repo, _, _ = repo
    exp = run(repo, "dvc", "exp", "run", "-S", "train.lr=0.01")
    ran = stages_run(exp.stdout)  # cross-validation uses the train stage's protocol, so it runs again too
    assert sorted(ran) == sorted([f"{s}@{m}" for s in ("train", "evaluate", "crossval") for m in MODELS] + ["compare"])
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    text = json.dumps(shown)
    for name in MODELS:
        assert f'"{name}"' in text and '"test"' in text
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
            cv = json.loads((repo / "metrics" / "crossval" / f"{name}.json").read_text())[name]["crossval"]
            assert cv["folds"] == 3 and f"| {name} | {100 * cv['accuracy_mean']:.1f} ± " in table
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
    from plankton_transfer.data.ecotaxa_tsv import validate_ecotaxa_tsv

    repo, expected, _ = repo
    images = tmp_path / "images"
    shutil.copytree(repo / "data" / "raw", images, symlinks=True)
    (images / "Copepoda" / "added_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200)
    (images / "added.png").write_text("a table saved as .png\n")
    (images / "Copepoda" / ".added_hidden.jpg").write_bytes(b"\0")
    monkeypatch.chdir(repo)  # models/<name>.pt and params.yaml of the pipeline
    out = tmp_path / "out" / "predictions.csv"
    table = predict.main(["--model", name, "--input", str(images), "--out", str(out), "--workers", "0"])
    table = table.set_index("id")
    test = pd.read_csv(repo / "data" / "split" / "test.csv", keep_default_na=False)
    evaluated = [row["predicted"] for row in json.loads((repo / "plots" / "confusion" / f"{name}.json").read_text())]
    assert table.loc[test["path"], "predicted"].tolist() == evaluated  # what the metrics were computed from
    assert set(table.index[table["error"] != ""]) == {*expected["rejected"], "Copepoda/added_truncated.jpg",
                                                      "added.png"}
    assert not any("ipynb_checkpoints" in i or "/." in i for i in table.index)
    tsv = out.with_name("ecotaxa_predictions.tsv")
    assert validate_ecotaxa_tsv(tsv) == []
    assert len(pd.read_csv(tsv, sep="\t", skiprows=[1])) == int((table["error"] == "").sum())


def test_model_files_carry_class_thresholds_and_evaluate_draws_the_review_trade_off(repo):
    import pandas as pd

    from plankton_transfer.models.heads import load_model_file

    repo, _, _ = repo
    sizes = json.loads((repo / "metrics" / "split.json").read_text())["sizes"]
    for name in MODELS:
        record = load_model_file(repo / "models" / f"{name}.pt")
        thresholds = record["thresholds"]
        assert thresholds["target_precision"] == 0.95 and set(thresholds["per_class"]) == set(record["classes"])
        assert sum(thresholds["val_predictions"].values()) == sizes["val"]
        assert all(t is None or 0 < t <= 1 for t in thresholds["per_class"].values())
        table = pd.read_csv(repo / "metrics" / "thresholds" / f"{name}.csv")
        assert table["accepted"].iloc[0] == sizes["test"] and table["auto_accepted"].is_monotonic_decreasing
        assert (repo / "plots" / "thresholds" / f"{name}.png").stat().st_size > 5000


def test_the_exported_model_runs_in_onnxruntime_as_in_pytorch(repo, tmp_path, monkeypatch):
    """EfficientNet-Lite0 only: exporting VGG11 and AlexNet (0.5 and 0.2 GB) would cost the suite minutes."""
    import numpy as np
    import onnxruntime
    import pandas as pd

    from plankton_transfer.cli import export
    from plankton_transfer.data.images import load_rgb
    from plankton_transfer.data.preprocess import Preprocess, make_transform
    from plankton_transfer.params import ImageParams

    repo, _, _ = repo
    monkeypatch.chdir(repo)
    name = "efficientnet_lite0"
    checks = export.main(["--models", name, "--out-dir", str(tmp_path), "--exporter", "torchscript"])[name]
    test = pd.read_csv(repo / "data" / "split" / "test.csv", keep_default_na=False)
    assert checks["test_images"] == len(test) and checks["onnx_max_abs_diff"] < 1e-4
    assert checks["torchscript_max_abs_diff"] < 1e-4
    folder = tmp_path / name
    meta = json.loads((folder / f"{name}.json").read_text())
    pre = meta["preprocessing"]["done_by_caller"]
    transform = make_transform(Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()
                                             if k in ("input_size", "resize_size", "interpolation", "mean", "std")}),
                               pre["mode"])
    images = np.stack([transform(load_rgb(repo / "data" / "raw" / p, ImageParams())).numpy() for p in test["path"]])
    session = onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    proba = session.run(None, {"image": images})[0]
    evaluated = [row["predicted"] for row in json.loads((repo / "plots" / "confusion" / f"{name}.json").read_text())]
    assert [meta["classes"][i] for i in proba.argmax(axis=1)] == evaluated
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Noctilucá" in card and "## Limits" in card and "full sha256 pinned" in card
    assert (folder / f"{name}.torchscript.pt").stat().st_size > 1_000_000


def leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_metric_files_hold_only_numbers_and_the_pretrained_flag(repo):
    repo, _, _ = repo
    files = [repo / "metrics" / "filter.json", repo / "metrics" / "split.json",
             *sorted((repo / "metrics" / "evaluate").glob("*.json")),
             *sorted((repo / "metrics" / "crossval").glob("*.json"))]
    assert len(files) == 2 + 2 * len(MODELS)
    for path in files:
        for key, value in leaves(json.loads(path.read_text())):
            assert isinstance(value, (int, float)), (path.name, key, value)
            assert not isinstance(value, bool) or key.endswith("pretrained"), (path.name, key)


def test_a_weight_file_added_to_one_backbones_folder_reruns_that_backbone_only(repo):
    import shutil

    from plankton_transfer.models.backbones import resolve_backbone_weights
    from plankton_transfer.params import PretrainedParams

    repo, _, _ = repo
    installed = Path(resolve_backbone_weights("efficientnet_lite0", PretrainedParams()).path)
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
