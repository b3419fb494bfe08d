"""The split stage: stratified, deterministic, no image content in two splits."""
from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from stages import split as split_stage
from plankton_transfer.errors import UserError
from plankton_transfer.data.splitting import split_counts, split_manifest
from plankton_transfer.params.split import SplitParams
from tests.conftest import write_params


def manifest(counts: dict[str, int], split: str = "") -> pd.DataFrame:
    rows = []
    for label, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            digest = hashlib.sha256(f"{name}{i}".encode()).hexdigest()
            rows.append({"path": f"{name}/{i}.jpg", "class": name, "label": label, "split": split,
                         "sha256": digest, "width": 9, "height": 9, "phash": digest[:16]})
    return pd.DataFrame(rows)


def test_split_counts_round_and_give_every_split_an_image():
    fr = SplitParams()
    assert split_counts(100, fr) == (80, 10, 10)
    assert split_counts(14, fr) == (12, 1, 1)
    assert split_counts(3, fr) == (1, 1, 1)
    assert split_counts(2, fr) == (2, 0, 0)


def test_stratified_and_deterministic():
    m = manifest({"a": 50, "b": 30, "c": 20})
    parts = split_manifest(m, SplitParams(0.6, 0.2, 0.2), seed=7)
    counts = {s: p["class"].value_counts().to_dict() for s, p in parts.items()}
    assert counts["val"] == {"a": 10, "b": 6, "c": 4} and counts["test"] == {"a": 10, "b": 6, "c": 4}
    again = split_manifest(m.sample(frac=1, random_state=3), SplitParams(0.6, 0.2, 0.2), seed=7)
    for s in parts:  # file order does not matter
        assert sorted(again[s]["path"]) == sorted(parts[s]["path"])
    other = split_manifest(m, SplitParams(0.6, 0.2, 0.2), seed=8)
    assert sorted(other["test"]["path"]) != sorted(parts["test"]["path"])


def test_adding_a_class_leaves_other_classes_unchanged():
    before = split_manifest(manifest({"a": 40, "b": 40}), SplitParams(), seed=1)
    after = split_manifest(manifest({"a": 40, "b": 40, "c": 40}), SplitParams(), seed=1)
    for s in before:
        assert set(before[s]["path"]) <= set(after[s]["path"])


def test_no_content_in_two_splits_and_every_row_kept():
    m = manifest({"a": 23, "b": 17})
    parts = split_manifest(m, SplitParams(), seed=0)
    assert sum(len(p) for p in parts.values()) == len(m)
    hashes = [set(p["sha256"]) for p in parts.values()]
    assert not (hashes[0] & hashes[1]) and not (hashes[0] & hashes[2]) and not (hashes[1] & hashes[2])


def test_presplit_is_kept_and_missing_test_is_carved_from_train():
    m = pd.concat([manifest({"a": 20, "b": 20}, "train"), manifest({"a": 3, "b": 3}, "val").assign(
        path=lambda d: "v/" + d["path"], sha256=lambda d: "v" + d["sha256"])])
    parts = split_manifest(m, SplitParams(), seed=0)
    assert len(parts["val"]) == 6 and set(parts["val"]["path"].str[:2]) == {"v/"}
    assert parts["test"]["class"].value_counts().to_dict() == {"a": 2, "b": 2}
    assert len(parts["train"]) == 36


def test_bad_fractions_are_refused():
    with pytest.raises(UserError, match="sum to 1"):
        SplitParams(0.8, 0.3, 0.1)


def test_stage_main(tmp_path):
    m = manifest({"a": 10, "b": 10})
    m.to_csv(tmp_path / "manifest.csv", index=False)
    params = write_params(tmp_path / "params.yaml")
    split_stage.main(["--manifest", str(tmp_path / "manifest.csv"), "--out-dir", str(tmp_path / "split"),
                      "--report", str(tmp_path / "report.json"), "--near-duplicates", str(tmp_path / "pairs.csv"),
                      "--params", str(params)])
    metrics = json.loads((tmp_path / "report.json").read_text())
    assert metrics["sizes"] == {"train": 16, "val": 2, "test": 2}
    assert metrics["leakage"]["near_duplicate_pairs"] == 0 and metrics["fraction_difference"] == 0.0
    test = pd.read_csv(tmp_path / "split" / "test.csv", keep_default_na=False)
    assert set(test["split"]) == {"test"} and list(test.columns) == [*m.columns, "sample", "group"]
    assert (test["group"] == "").all() and (test["sample"] == "").all()  # split.group: none, no sample_id


def test_reports_default_to_beside_the_output_folder(tmp_path, monkeypatch):
    """Without --report/--near-duplicates the split writes them beside --out-dir, never into the
    project's data/ of whatever folder it was started from."""
    monkeypatch.chdir(tmp_path)
    manifest({"a": 10, "b": 10}).to_csv(tmp_path / "manifest.csv", index=False)
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "run" / "split"
    split_stage.main(["--manifest", str(tmp_path / "manifest.csv"), "--out-dir", str(out), "--params", str(params)])
    assert json.loads((out.parent / "split_report.json").read_text())["near_duplicate_pairs_file"] == \
        str(out.parent / "split_near_duplicates.csv")
    assert (out.parent / "split_near_duplicates.csv").is_file() and not (tmp_path / "data").exists()
