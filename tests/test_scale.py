"""Head training at any size: batches streamed from the memory-mapped feature files give the
head that resident features give, and auto chooses by the free memory."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from plankton_transfer.models import training
from plankton_transfer.models.provenance import load_meta
from plankton_transfer.models.training import train_heads
from plankton_transfer.params.train import TrainParams
from plankton_transfer.settings import RunSettings
from tests.field_data import write_feature_meta


def feature_folder(path, n_train=150, n_val=40, dim=32, classes=4, seed=0):
    """A features folder as the extract stage writes it, with separable float16 features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    path.mkdir()
    sizes = {"train": n_train, "val": n_val, "test": 10}
    for split, n in sizes.items():
        y = np.arange(n) % classes
        np.save(path / f"{split}.npy", (centres[y] + rng.normal(size=(n, dim))).astype(np.float16))
        np.save(path / f"{split}_labels.npy", y.astype(np.int64))
    write_feature_meta(path, "synthetic", [f"c{i}" for i in range(classes)], dim, sizes)
    return path


def run(folder, cfg: TrainParams, features: str, seed: int = 3):
    return train_heads(folder, load_meta(folder), cfg, seed, RunSettings(device="cpu", features=features))


def test_streamed_training_gives_the_resident_head(tmp_path):
    folder = feature_folder(tmp_path / "features")
    cfg = TrainParams(lr=(0.01, 0.1), max_epochs=6, patience=3)
    resident, streamed = run(folder, cfg, "resident"), run(folder, cfg, "stream")
    assert resident.placement["placement"] == "resident" and streamed.placement["placement"] == "stream"
    assert resident.fit.best_epoch == streamed.fit.best_epoch and resident.fit.best_val_loss == streamed.fit.best_val_loss
    assert resident.fit.history == streamed.fit.history
    for a, b in zip(resident.fit.heads, streamed.fit.heads):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_auto_streams_when_the_features_do_not_fit_and_says_so(tmp_path, monkeypatch):
    folder = feature_folder(tmp_path / "features", n_train=48, n_val=24)
    need = 2 * ((folder / "train.npy").stat().st_size + (folder / "val.npy").stat().st_size)  # as float32
    monkeypatch.setattr(training, "free_memory", lambda device: need)  # fits, but not in half of it
    cfg = TrainParams(max_epochs=2)
    placement = run(folder, cfg, "auto", seed=0).placement
    assert placement == {"placement": "stream", "chosen_by": "auto", "feature_bytes": need, "free_bytes": need,
                         "device": "cpu"}
    monkeypatch.setattr(training, "free_memory", lambda device: 4 * need)
    assert run(folder, cfg, "auto", seed=0).placement["placement"] == "resident"
    forced = run(folder, dataclasses.replace(cfg), "stream", seed=0).placement
    assert forced["placement"] == "stream" and forced["chosen_by"] == "PLANKTON_FEATURES"
