"""Saying "unknown": the openset stage's detector used by plankton-predict, on a tiny model (the
plumbing: CSV, EcoTaxa upload, counts) and on a real one (EfficientNet-Lite0 with its ImageNet
weights, trained on the bundled FlowCam sample) meeting images of another instrument."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from plankton_transfer.cli import predict
from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.calibration import fit_temperature
from plankton_transfer.models.linear_head import LinearHead
from plankton_transfer.models.model_file import Calibration
from plankton_transfer.models.unknown import UnknownDetector, detector_path, fit_detector
from tests.conftest import ROOT, make_dataset
from tests.field_data import ifcb_like_roi, lite0_model, tiny_model, write_bin
from tests.test_predict import CPU, upload

SAMPLE = ROOT / "data" / "flowcam-sample"


def test_images_over_the_threshold_are_unknown_reviewed_and_left_unclassified_in_ecotaxa(tmp_path):
    model = tiny_model(classes=("Copepoda", "Diatomea", "other"), dim=4096)
    path = tmp_path / "models" / "tiny.pt"
    path.parent.mkdir()
    model.save(path)
    images = make_dataset(tmp_path / "new", {"s1": 6, "s2": 6})
    # a detector whose threshold falls inside the images' msp scores: some unknown, some not
    plain = UnknownDetector(model=model.name, model_fingerprint=model.fingerprint(), score="msp", chosen_by="test",
                            threshold=float("inf"), target_known_kept=0.95, val_known_kept=1.0, vim_alpha=1.0,
                            tensors={})
    plain.save(detector_path(path))
    scores = predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "all"), *CPU])
    assert (scores["predicted"] != "unknown").all() and scores["unknown_score"].notna().all()
    threshold = float(np.median(scores["unknown_score"]))
    dataclasses.replace(plain, threshold=threshold).save(detector_path(path))

    table = predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "out"), *CPU])
    unknown = table["unknown_score"] > threshold
    assert unknown.any() and (~unknown).any()
    assert (table.loc[unknown, "predicted"] == "unknown").all() and table.loc[unknown, "needs_review"].all()
    assert table.loc[unknown, "review_reason"].str.startswith("unknown: its unknown score").all()
    assert (table.loc[~unknown, "predicted"] == table.loc[~unknown, "best_class"]).all()
    assert set(table.loc[unknown, "best_class"]) <= set(model.classes)

    rows, _, _ = upload(tmp_path / "out")
    by_file = rows.set_index("object_original_file")
    for file, flagged in zip(table["file"], unknown):
        row = by_file.loc[file]
        assert (row["object_annotation_status"], row["object_annotation_category"]) == (
            ("", "") if flagged else ("predicted", table.set_index("file").loc[file, "predicted"]))
        assert float(row["object_unknown_score"]) == pytest.approx(table.set_index("file").loc[file, "unknown_score"])

    counts = pd.read_csv(tmp_path / "out" / "counts.csv")
    assert set(counts.columns) == {"sample", "class", "images", "classify_count", "probabilistic_count", "em"}
    assert counts.groupby("sample")["classify_count"].sum().sum() == len(table)
    assert counts[counts["class"] == "unknown"]["classify_count"].sum() == unknown.sum()
    for method in ("probabilistic_count", "em"):  # every image counted once, unknown ones apart
        assert counts[method].sum() == pytest.approx(len(table), abs=0.05)


def test_a_detector_of_another_training_is_refused_and_no_unknown_skips_it(tmp_path, capsys):
    model = tiny_model(classes=("a", "b", "c"), seed=0)
    path = tmp_path / "m.pt"
    model.save(path)
    other = tiny_model(classes=("a", "b", "c"), seed=1)
    UnknownDetector(model=other.name, model_fingerprint=other.fingerprint(), score="energy", chosen_by="test",
                    threshold=0.0, target_known_kept=0.95, val_known_kept=1.0, vim_alpha=1.0,
                    tensors={}).save(detector_path(path))
    images = make_dataset(tmp_path / "new", {"x": 2})
    with pytest.raises(UserError, match="fitted for another training of alexnet.*--no-unknown"):
        predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "out"), *CPU])
    table = predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "out"), "--no-unknown",
                          *CPU])
    assert "unknown_score" not in table and (table["predicted"] != "unknown").all()
    detector_path(path).unlink()
    predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "again"), *CPU])
    assert "no unknown detector" in capsys.readouterr().err


def sample_features(tmp_path, model) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Lite0 features of every bundled FlowCam image, through predict's own feature path."""
    from plankton_transfer.data.sources import list_inputs
    from plankton_transfer.models.inference import classify_features, load_predictor
    from plankton_transfer.params.pretrained import PretrainedParams

    inputs = list_inputs(SAMPLE, "folder")
    predictor = load_predictor(model, PretrainedParams(), "cpu")
    features, errors, _ = classify_features(predictor, inputs.items, batch_size=16, workers=0)
    assert not errors
    classes = sorted({item.id.split("/")[0] for item in inputs.items})
    x = np.stack([features[i] for i in range(len(inputs.items))]).astype(np.float32)
    y = np.array([classes.index(item.id.split("/")[0]) for item in inputs.items])
    return x, y, classes


def test_a_model_trained_on_flowcam_images_flags_another_instruments_rois_as_unknown(tmp_path):
    from plankton_transfer.models.heads import train_linear_head
    from plankton_transfer.params.train import TrainParams

    base = lite0_model(classes=("a",))
    x, y, classes = sample_features(tmp_path, base)
    val = np.zeros(len(y), bool)
    for c in range(len(classes)):  # a quarter of each class validates
        val[np.flatnonzero(y == c)[::4]] = True
    head = train_linear_head(x[~val], y[~val], x[val], y[val], len(classes), TrainParams(), seed=0)
    t = fit_temperature(head.logits(x[val]), y[val])["temperature"]
    model = dataclasses.replace(base, classes=tuple(classes), head=LinearHead(head.weight.detach(), head.bias.detach()),
                                calibration=Calibration(t, 1.0, 1.0, "temperature"),
                                thresholds=dataclasses.replace(base.thresholds, per_class={c: None for c in classes}))
    path = tmp_path / "lite0.pt"
    model.save(path)
    rng = np.random.default_rng(0)
    write_bin(tmp_path / "ifcb", "D20240601T120000_IFCB999", [ifcb_like_roi(rng) for _ in range(20)], schema=2)
    flagged = {}
    for score in ("msp", "vim"):
        detector = fit_detector(model, (x[~val], y[~val]), (x[val], y[val]), score, "test", 0.95)
        assert detector.val_known_kept >= 0.95
        detector.save(detector_path(path))
        table = predict.main(["--model", str(path), "--input", str(tmp_path / "ifcb"), "--out",
                              str(tmp_path / score), *CPU])
        flagged[score] = float((table["predicted"] == "unknown").mean())
    print(f"IFCB-like ROIs flagged unknown: {flagged}")
    # ViM, the residual outside the known classes' feature subspace, flags most images of another
    # instrument; msp (measured 0.4 here) depends on how unsure the head happens to be about them
    assert flagged["vim"] >= 0.8, flagged


def test_select_unknown_first_ranks_by_the_models_detector_when_it_has_one(tmp_path):
    import json

    from plankton_transfer.cli import select

    model = tiny_model(classes=("a", "b", "c"))
    path = tmp_path / "m.pt"
    model.save(path)
    UnknownDetector(model=model.name, model_fingerprint=model.fingerprint(), score="msp", chosen_by="test",
                    threshold=0.5, target_known_kept=0.95, val_known_kept=1.0, vim_alpha=1.0,
                    tensors={}).save(detector_path(path))
    pool = make_dataset(tmp_path / "pool", {"x": 5})
    table = select.main(["--model", str(path), "--input", str(pool), "--out", str(tmp_path / "out"), "-n", "2",
                         "--strategy", "unknown_first", *CPU])
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["settings"]["unknown_score"] == "msp"
    assert (table["unknown_msp"] - (1 - table["probability"])).abs().max() < 1e-3  # msp: 1 - top probability
    assert set(table[table["selected"]]["unknown_msp"]) == set(table["unknown_msp"].nlargest(2))
