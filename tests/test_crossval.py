"""Cross-validation on cached features: the train stage's protocol in every fold, no fold's
test images used for early stopping, groups kept together."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from plankton_transfer.models import crossval
from plankton_transfer.models.crossval import fit_folds
from plankton_transfer.models.folds import make_folds
from plankton_transfer.models.heads import fit_heads
from plankton_transfer.params.crossval import CrossvalParams
from plankton_transfer.params.train import TrainParams
from plankton_transfer.evaluation.summary import CrossvalSummary
from stages import crossval as crossval_stage
from tests.conftest import write_params
from tests.field_data import write_feature_meta


def blobs(n: int, dim: int = 12, classes: int = 3, seed: int = 0, noise: float = 2.0):
    centres = np.random.default_rng(123).normal(size=(classes, dim)) * 2
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (centres[y] + noise * rng.normal(size=(n, dim))).astype(np.float16), y


def test_folds_trained_in_chunks_equal_all_folds_at_once_and_each_fold_alone(monkeypatch):
    x, y = blobs(103)
    cfg = TrainParams(lr=(0.01, 0.1), batch_size=73, max_epochs=25, patience=4)  # folds of 73 and 74 images
    folds = make_folds(y, None, CrossvalParams(folds=5, repeats=1), seed=3)
    steps = {math.ceil(len(f.train) / cfg.batch_size) for f in folds}
    assert len(steps) > 1, "folds should need different numbers of batches, so the skipping is exercised"
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)
    together = fit_folds(xt, yt, folds, 3, cfg, seed=3)
    monkeypatch.setattr(crossval, "HEADS_AT_ONCE", 4)  # two folds (of two learning rates) at a time
    chunked = fit_folds(xt, yt, folds, 3, cfg, seed=3)
    for i, fold in enumerate(folds):
        alone = fit_heads(xt, yt, [fold.rows], 3, cfg, seed=3, first_group=i)
        for k in range(2):
            for result in (together, chunked):
                assert result.best_epoch[2 * i + k] == alone.best_epoch[k]
                assert result.epochs_run[2 * i + k] == alone.epochs_run[k]
                assert result.best_val_loss[2 * i + k] == pytest.approx(alone.best_val_loss[k], rel=1e-5)
                assert torch.allclose(result.heads[2 * i + k].weight, alone.heads[k].weight, atol=1e-5)


def test_every_image_is_tested_once_per_repeat_and_never_used_for_its_own_early_stopping():
    _, y = blobs(60)
    folds = make_folds(y, None, CrossvalParams(folds=4, repeats=3, val_fraction=0.2), seed=0)
    assert len(folds) == 12
    for repeat in range(3):
        tested = np.concatenate([f.test for f in folds if f.repeat == repeat])
        assert sorted(tested) == list(range(60))
    for f in folds:
        assert not (set(f.test) & set(f.val)) and not (set(f.test) & set(f.train)) and not (set(f.val) & set(f.train))
        assert len(f.train) + len(f.val) + len(f.test) == 60
        assert 0.15 < len(f.val) / (len(f.train) + len(f.val)) < 0.25
        assert set(y[f.val]) == {0, 1, 2}  # stratified


def test_classes_smaller_than_the_validation_parts_still_get_a_validation_part():
    y = np.repeat(np.arange(3), 8)  # 2 folds: 4 images per class in a training part, fewer than 1 / 0.1
    for f in make_folds(y, None, CrossvalParams(folds=2, repeats=1, val_fraction=0.1), seed=0):
        assert len(f.val) >= 3 and set(y[f.val]) == {0, 1, 2} and len(f.train) > len(f.val)


def test_grouped_folds_never_split_a_group():
    _, y = blobs(90)
    groups = np.array([f"sample{i // 3}" for i in range(90)])  # 30 groups of 3 images
    for f in make_folds(y, groups, CrossvalParams(folds=3, repeats=2), seed=1):
        parts = [set(groups[f.train]), set(groups[f.val]), set(groups[f.test])]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def write_features(folder, split_dir, sizes: dict[str, int]) -> None:
    """A features folder and split CSVs as the extract and split stages write them."""
    folder.mkdir(parents=True)
    split_dir.mkdir(parents=True)
    for i, (split, n) in enumerate(sizes.items()):
        x, y = blobs(n, seed=i)
        np.save(folder / f"{split}.npy", x)
        np.save(folder / f"{split}_labels.npy", y.astype(np.int64))
        pd.DataFrame({"path": [f"{split}/{j}.jpg" for j in range(n)], "class": [f"c{v}" for v in y], "label": y,
                      "group": ""}).to_csv(split_dir / f"{split}.csv", index=False)
    write_feature_meta(folder, "toy", ["c0", "c1", "c2"], x.shape[1], sizes)


def test_stage_writes_numbers_per_fold_table_and_pooled_confusion(tmp_path):
    write_features(tmp_path / "features", tmp_path / "split", {"train": 48, "val": 6, "test": 6})
    params = write_params(tmp_path / "params.yaml", crossval={"folds": 3, "repeats": 2},
                          train={"max_epochs": 10, "lr": [0.01, 0.1]})
    crossval_stage.main(["--features", str(tmp_path / "features"), "--split-dir", str(tmp_path / "split"),
                         "--out-dir", str(tmp_path / "cv"), "--confusion", str(tmp_path / "confusion.json"),
                         "--params", str(params)])
    summary = CrossvalSummary.load_json(tmp_path / "cv" / "summary.json")
    assert (summary.model, summary.folds, summary.repeats, summary.images) == ("toy", 3, 2, 60)
    table = pd.read_csv(tmp_path / "cv" / "folds.csv")
    assert len(table) == 6 and (table["test"] == 20).all() and set(table["lr"]) <= {0.01, 0.1}
    accuracy = summary.metrics["accuracy"]
    assert accuracy.mean == pytest.approx(table["accuracy"].mean(), abs=1e-4)
    assert accuracy.sd == pytest.approx(table["accuracy"].std(ddof=1), abs=1e-4)
    assert accuracy.mean > 0.6  # separable blobs: the protocol learns them
    confusion = json.loads((tmp_path / "confusion.json").read_text())
    assert len(confusion) == 60 * 2 and {"actual", "predicted"} == set(confusion[0])


def test_more_folds_than_the_smallest_class_is_said_in_one_note_not_a_sklearn_warning(capsys):
    y = np.array([0] * 3 + [1] * 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's own UserWarning would fail here
        folds = make_folds(y, None, CrossvalParams(folds=5, repeats=1), seed=0)
    assert len(folds) == 5 and sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(15))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: crossval.folds is 5 but the smallest class has 3 images: some folds test none of its "
                   "images (lower crossval.folds to test every class in every fold)"]
