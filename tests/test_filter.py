"""The filter stage: discovery, validation report, duplicates, class selection, cache."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from stages import filter as filter_stage
from plankton_transfer.data import validation
from plankton_transfer.errors import UserError
from plankton_transfer.data.filtering import filter_dataset
from plankton_transfer.params.filter import FilterParams
from plankton_transfer.data.images import ImageParams
from plankton_transfer.data.scan import scan_dataset
from tests.conftest import make_dataset, make_messy_dataset, write_params

IMG = ImageParams()


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "raw"
    expected = make_messy_dataset(root)
    return root, expected


def test_messy_folder_every_file_is_accounted_for(messy):
    root, expected = messy
    result = filter_dataset(root, FilterParams(min_images_per_class=5), IMG)
    report = result.report.to_dict()
    assert report["files_seen"] == expected["files_on_disk"]
    assert sum(report["summary"].values()) == expected["files_on_disk"]
    assert report["classes"]["kept"] == expected["kept_classes"]
    assert result.manifest["class"].value_counts().to_dict() == expected["kept_classes"]
    rejected = {r["path"]: r["reason"].split(":")[0] for r in report["rejected"]["files"]}
    assert rejected == expected["rejected"]
    assert {c["path"] for c in report["converted"]["files"]} == expected["converted"]
    assert {d["path"]: d["duplicate_of"] for d in report["duplicates"]} == expected["duplicates"]
    assert [set(c["paths"]) for c in report["label_conflicts"]] == [expected["conflict"]]
    assert report["summary"]["ignored"] == expected["ignored"]
    assert set(report["classes"]["dropped"]) == expected["dropped_classes"]
    assert report["classes"]["dropped"]["empty"]["reason"].startswith("empty folder")
    assert "min_images_per_class" in report["classes"]["dropped"]["Tiny"]["reason"]
    reasons = report["ignored"]["count_by_reason"]
    assert reasons["hidden file (macOS AppleDouble)"] == 1 and reasons["hidden folder"] == 1
    assert reasons["not an image file (.db)"] == 1 and reasons["not an image file (.csv)"] == 1
    assert any(e["reason"].startswith("folder already visited") for e in report["ignored"]["entries"])
    assert not set(result.manifest["path"]) & (set(expected["rejected"]) | expected["conflict"])
    assert set(result.manifest["sha256"].value_counts()) == {1}


def test_label_conflict_can_stop_the_run(messy):
    root, _ = messy
    with pytest.raises(UserError, match="label conflict.*filter.label_conflicts=drop"):
        filter_dataset(root, FilterParams(min_images_per_class=5, label_conflicts="error"), IMG)


def test_presplit_layout_is_kept_and_cross_split_copies_stay_in_train(tmp_path):
    root = tmp_path / "raw"
    make_dataset(root / "train", {"a": 6, "b": 6}, seed=1)
    make_dataset(root / "valid", {"a": 2, "b": 2}, seed=2)
    make_dataset(root / "test", {"a": 2, "b": 2}, seed=3)
    (root / "test" / "a" / "leak.jpg").write_bytes((root / "train" / "a" / "a_000.jpg").read_bytes())
    result = filter_dataset(root, FilterParams(min_images_per_class=1), IMG)
    assert result.report.layout == "split folders"
    assert result.manifest["split"].value_counts().to_dict() == {"train": 12, "val": 4, "test": 4}
    (dup,) = result.report.duplicates
    assert dup["path"] == "test/a/leak.jpg" and "kept in train only" in dup["note"]


def test_mixed_split_and_class_folders_are_refused(tmp_path):
    make_dataset(tmp_path / "train", {"a": 1})
    make_dataset(tmp_path, {"b": 1})
    with pytest.raises(UserError, match="mixes split folders"):
        scan_dataset(tmp_path)


def test_include_exclude_and_cap(tmp_path):
    make_dataset(tmp_path, {"a": 5, "b": 7, "c": 3})
    cfg = FilterParams(min_images_per_class=1, exclude=("c",), max_per_class=4)
    result = filter_dataset(tmp_path, cfg, IMG)
    assert result.manifest["class"].value_counts().to_dict() == {"a": 4, "b": 4}
    assert result.report.classes["over_cap"] == {"a": 1, "b": 3}
    assert result.report.classes["dropped"]["c"]["reason"] == "in filter.exclude"
    assert result.manifest["label"].tolist() == [0] * 4 + [1] * 4
    again = filter_dataset(tmp_path, cfg, IMG)
    assert again.manifest.equals(result.manifest)  # the capped subset is reproducible
    with pytest.raises(UserError, match="'d', which is not a class folder"):
        filter_dataset(tmp_path, FilterParams(include=("d",)), IMG)


def test_symlinked_class_folder_inside_raw_is_followed_and_one_leaving_it_is_refused(tmp_path):
    root = tmp_path / "raw"
    make_dataset(root, {"b": 3}, seed=2)
    make_dataset(root / ".store", {"a": 3}, seed=1)  # hidden, so only reachable through the link
    os.symlink(root / ".store" / "a", root / "a")
    result = filter_dataset(root, FilterParams(min_images_per_class=1), IMG)
    assert result.manifest["class"].value_counts().to_dict() == {"a": 3, "b": 3}
    make_dataset(tmp_path / "elsewhere", {"c": 3}, seed=3)
    os.symlink(tmp_path / "elsewhere" / "c", root / "c")
    with pytest.raises(UserError, match="folder links leaving .*raw: c; DVC does not track.*point data.raw at"):
        filter_dataset(root, FilterParams(min_images_per_class=1), IMG)


def test_validation_cache_skips_unchanged_files(tmp_path, monkeypatch):
    make_dataset(tmp_path / "raw", {"a": 4, "b": 4})
    cache = tmp_path / "cache.csv"
    cfg = FilterParams(min_images_per_class=1)
    first = filter_dataset(tmp_path / "raw", cfg, IMG, cache)
    checked = []
    real = validation.check_image
    monkeypatch.setattr(validation, "check_image", lambda path, cfg: checked.append(path) or real(path, cfg))
    second = filter_dataset(tmp_path / "raw", cfg, IMG, cache)
    assert checked == [] and second.manifest.equals(first.manifest)
    (tmp_path / "raw" / "a" / "a_000.jpg").write_bytes(b"broken now")
    third = filter_dataset(tmp_path / "raw", cfg, IMG, cache)
    assert [p.name for p in checked] == ["a_000.jpg"]
    assert third.report.rejected["files"][0]["path"] == "a/a_000.jpg"
    filter_dataset(tmp_path / "raw", cfg, ImageParams(min_side=5), cache)  # other params: no reuse
    assert len(checked) == 1 + 8


def test_stage_main_writes_outputs_and_strict_mode_fails(messy, tmp_path, capsys):
    root, expected = messy
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 5})
    out = tmp_path / "out"
    args = ["--raw", str(root), "--manifest", str(out / "m.csv"), "--report", str(out / "r.json"),
            "--cache-file", str(out / "c.csv"), "--params", str(params)]
    filter_stage.main(args)
    manifest = pd.read_csv(out / "m.csv", keep_default_na=False)
    assert len(manifest) == sum(expected["kept_classes"].values())
    assert json.loads((out / "r.json").read_text())["summary"]["rejected"] == 4
    assert "4 rejected" in capsys.readouterr().out.replace("  ", " ").replace("  ", " ")
    write_params(params, filter={"min_images_per_class": 5, "strict": True})
    with pytest.raises(UserError, match="4 files rejected .*filter.strict=false"):
        filter_stage.main(args)


def test_unknown_param_key_is_rejected(tmp_path):
    params = write_params(tmp_path / "params.yaml", filter={"min_image_per_class": 3})
    with pytest.raises(UserError, match="unknown key.*filter.min_image_per_class"):
        filter_stage.main(["--raw", str(tmp_path), "--params", str(params)])
