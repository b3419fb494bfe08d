"""train -> evaluate -> crossval -> compare in-process on tiny synthetic features: the model file's
temperature, the intervals, calibration and abundance metrics, and compare.md's sections."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from plankton_transfer.models.heads import head_logits, head_probabilities, load_model_file
from stages import compare as compare_stage
from stages import crossval as crossval_stage
from stages import evaluate as evaluate_stage
from stages import train as train_stage
from tests.conftest import write_params

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
    meta = {"backbone": name, "classes": CLASSES, "feature_dim": dim, "backbone_parameters": 1000,
            "weights": {"pretrained": True, "description": "toy", "sha256": "", "init_seed": 0},
            "preprocess": {"mode": "pad"}, "sizes": SIZES, "seconds": 1.0, "images_per_s": 90.0, "environment": {}}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool only adds hand-offs (tenfold on a busy machine)
    try:
        yield run_stages(tmp_path_factory.mktemp("uncertainty"))
    finally:
        torch.set_num_threads(threads)


def run_stages(root):
    split = root / "split"
    split.mkdir()
    for s, n in SIZES.items():
        y = np.arange(n) % 3
        pd.DataFrame({"path": [f"{s}/{j}.jpg" for j in range(n)], "class": [CLASSES[v] for v in y], "label": y,
                      "group": ""}).to_csv(split / f"{s}.csv", index=False)
    models = {"sharp": 1.0, "blurry": 4.0}
    params = write_params(root / "params.yaml", models=list(models), train={"max_epochs": 8, "lr": 0.05},
                          crossval={"folds": 3, "repeats": 1}, stats={"resamples": 500})
    for name, noise in models.items():
        features = root / "features" / name
        write_model_features(features, name, noise)
        train_stage.main(["--features", str(features), "--model-file", str(root / "models" / f"{name}.pt"),
                          "--live-dir", str(root / "train" / name), "--params", str(params)])
        evaluate_stage.main([
            "--model-file", str(root / "models" / f"{name}.pt"), "--features", str(features), "--split-dir", str(split),
            "--metrics", str(root / "evaluate" / f"{name}.json"), "--confusion", str(root / "conf" / f"{name}.json"),
            "--confusion-png", str(root / "conf" / f"{name}.png"), "--per-class", str(root / "pc" / f"{name}.csv"),
            "--misclassified", str(root / "mis" / f"{name}.csv"), "--run-record", str(root / "runs" / f"{name}.json"),
            "--predictions", str(root / "predictions" / f"{name}.csv"),
            "--reliability", str(root / "calibration" / f"{name}.json"),
            "--reliability-png", str(root / "calibration" / f"{name}.png"),
            "--abundance", str(root / "abundance" / f"{name}.csv"),
            "--abundance-png", str(root / "abundance" / f"{name}.png"), "--params", str(params),
            "--thresholds-table", str(root / "thresholds" / f"{name}.csv"),
            "--thresholds-png", str(root / "thresholds" / f"{name}.png")])
        crossval_stage.main(["--features", str(features), "--split-dir", str(split),
                             "--metrics", str(root / "crossval" / f"{name}.json"),
                             "--folds", str(root / "crossval" / f"{name}_folds.csv"),
                             "--confusion", str(root / "cvconf" / f"{name}.json"), "--params", str(params)])
    compare_stage.main(["--metrics-dir", str(root / "evaluate"), "--runs-dir", str(root / "runs"),
                        "--out-dir", str(root / "compare"), "--plot", str(root / "compare" / "time.png"),
                        "--crossval-dir", str(root / "crossval"), "--predictions-dir", str(root / "predictions"),
                        "--abundance-dir", str(root / "abundance"), "--intervals-plot", str(root / "intervals.png"),
                        "--train-dir", str(root / "train"), "--curves", str(root / "curves.json"),
                        "--params", str(params)])
    return root, models


def test_the_model_file_holds_a_validation_temperature_that_every_probability_uses(pipeline):
    root, models = pipeline
    for name in models:
        record = load_model_file(root / "models" / f"{name}.pt")
        c = record["calibration"]
        assert c["val_loss_after"] <= c["val_loss_before"] and c["temperature"] > 0
        x = np.load(root / "features" / name / "test.npy")
        logits = head_logits(record, x)
        assert np.allclose(head_probabilities(record, x), softmax(logits / c["temperature"], axis=1), atol=1e-5)
        raw = head_probabilities(record, x, calibrated=False)
        assert (head_probabilities(record, x).argmax(1) == raw.argmax(1)).all()
        m = json.loads((root / "evaluate" / f"{name}.json").read_text())[name]
        assert m["calibration"]["temperature"] == pytest.approx(c["temperature"], abs=1e-4)
        assert m["test"]["loss"] == pytest.approx(m["calibration"]["test_loss_after"], abs=1e-4)
        predictions = pd.read_csv(root / "predictions" / f"{name}.csv")
        assert len(predictions) == SIZES["test"]
        assert predictions["correct"].mean() == pytest.approx(m["test"]["accuracy"], abs=1e-4)


def test_compare_md_has_intervals_a_sentence_per_pair_and_every_section(pipeline):
    root, models = pipeline
    text = (root / "compare" / "compare.md").read_text()
    for name in models:
        m = json.loads((root / "evaluate" / f"{name}.json").read_text())[name]
        t = m["test"]
        assert f"{100 * t['accuracy']:.1f} [{100 * t['accuracy_lo']:.1f}, {100 * t['accuracy_hi']:.1f}]" in text
        assert set(m["abundance"]) == {"classify_count_error", "adjusted_count_error"}
    (pair,) = json.loads((root / "compare" / "pairs.json").read_text())
    assert pair["model_a"] == "sharp" and pair["difference"] >= 0  # the more accurate model first
    assert "sharp vs blurry: +" in text and text.count("McNemar p") == 1
    for heading in ("## Paired comparison", "## Cross-validation", "## Calibration", "## Abundance"):
        assert heading in text
    assert "3-fold stratified cross-validation repeated 1 times over all 90 filtered images" in text
    curves = json.loads((root / "curves.json").read_text())
    assert {r["series"] for r in curves} == set(models) and {"val_loss", "train_loss", "val_accuracy"} <= set(curves[0])
    reliability = json.loads((root / "calibration" / "sharp.json").read_text())
    assert "perfectly calibrated" in {r["series"] for r in reliability}


def test_one_model_says_there_is_nothing_to_pair(pipeline, tmp_path):
    root, _ = pipeline
    params = write_params(tmp_path / "params.yaml", models=["sharp"], stats={"resamples": 500})
    compare_stage.main(["--metrics-dir", str(root / "evaluate"), "--runs-dir", str(root / "runs"),
                        "--out-dir", str(tmp_path / "compare"), "--plot", str(tmp_path / "time.png"),
                        "--predictions-dir", str(root / "predictions"), "--params", str(params)])
    text = (tmp_path / "compare" / "compare.md").read_text()
    assert "Only 1 model: there is no pair to compare." in text
    assert json.loads((tmp_path / "compare" / "pairs.json").read_text()) == []
