"""Head training at any size: batches streamed from the memory-mapped feature files give the
head that resident features give, and auto chooses by the free memory."""
from __future__ import annotations

import json

import numpy as np
import torch

from plankton_transfer.models import training
from plankton_transfer.models.training import model_record, train_heads
from plankton_transfer.params import TrainParams


def feature_folder(path, n_train=150, n_val=40, dim=32, classes=4, seed=0):
    """A features folder as the extract stage writes it, with separable float16 features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    path.mkdir()
    for split, n in (("train", n_train), ("val", n_val), ("test", 10)):
        y = np.arange(n) % classes
        np.save(path / f"{split}.npy", (centres[y] + rng.normal(size=(n, dim))).astype(np.float16))
        np.save(path / f"{split}_labels.npy", y.astype(np.int64))
    meta = {"backbone": "synthetic", "weights": {}, "preprocess": {}, "feature_dim": dim,
            "classes": [f"c{i}" for i in range(classes)], "sizes": {"train": n_train, "val": n_val, "test": 10}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_streamed_training_gives_the_resident_head(tmp_path):
    folder = feature_folder(tmp_path / "features")
    cfg = dict(lr=(0.01, 0.1), max_epochs=6, patience=3, device="cpu")
    resident, meta_r, _ = train_heads(folder, TrainParams(**cfg, features_on_device="resident"), seed=3)
    streamed, meta_s, _ = train_heads(folder, TrainParams(**cfg, features_on_device="stream"), seed=3)
    assert meta_r["train_features"]["placement"] == "resident" and meta_s["train_features"]["placement"] == "stream"
    assert resident.best_epoch == streamed.best_epoch and resident.best_val_loss == streamed.best_val_loss
    assert resident.history == streamed.history
    for a, b in zip(resident.best_states, streamed.best_states):
        assert torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])


def test_auto_streams_when_the_features_do_not_fit_and_says_so(tmp_path, monkeypatch):
    folder = feature_folder(tmp_path / "features", n_train=48, n_val=24)
    need = (folder / "train.npy").stat().st_size + (folder / "val.npy").stat().st_size
    monkeypatch.setattr(training, "free_memory", lambda device: need)  # fits, but not in half of it
    cfg = TrainParams(max_epochs=2, device="cpu")
    result, meta, seconds = train_heads(folder, cfg, seed=0)
    placement = model_record(result, 0, meta, cfg, 0, seconds)["training"]["features"]
    assert placement == {"placement": "stream", "chosen_by": "auto", "feature_bytes": need, "free_bytes": need,
                         "device": "cpu"}
    monkeypatch.setattr(training, "free_memory", lambda device: 4 * need)
    assert train_heads(folder, cfg, seed=0)[1]["train_features"]["placement"] == "resident"
