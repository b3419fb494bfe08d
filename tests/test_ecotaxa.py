"""EcoTaxa in and out: training from an unzipped export (filter and split stages), and the
validator every table the code writes is checked with."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from plankton_transfer.data.ecotaxa_tsv import validate_ecotaxa_tsv, write_ecotaxa_tsv
from plankton_transfer.errors import UserError
from stages import filter as filter_stage
from stages import split as split_stage
from tests.conftest import write_params
from tests.field_data import NON_ASCII_TAXON, make_ecotaxa_export


def run_filter(tmp_path, raw, **ecotaxa):
    tmp_path.mkdir(parents=True, exist_ok=True)
    params = write_params(tmp_path / "params.yaml", data={"raw": str(raw)}, ecotaxa=ecotaxa,
                          filter={"min_images_per_class": 3, "workers": 1})
    out = tmp_path / "out"
    filter_stage.main(["--params", str(params), "--manifest", str(out / "manifest.csv"), "--report",
                       str(out / "report.json"), "--metrics", str(out / "filter.json"), "--cache-file",
                       str(out / "cache.csv")])
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    return manifest, json.loads((out / "report.json").read_text(encoding="utf-8")), params


def test_filter_and_split_train_on_the_validated_objects_of_an_export(tmp_path):
    raw = tmp_path / "export"
    expected = make_ecotaxa_export(raw)
    manifest, report, params = run_filter(tmp_path, raw)
    assert report["layout"] == "EcoTaxa export"
    assert manifest["class"].value_counts().to_dict() == expected["classes"]  # the non-ASCII taxon included
    assert all((raw / p).is_file() for p in manifest["path"])  # paths relative to data.raw
    entries = {e["path"]: e for e in report["ignored"]["entries"]}
    assert entries[expected["missing"]]["reason"] == "missing image" and entries[expected["missing"]]["files"] == 0
    assert "sample_a/ecotaxa_sample_a.tsv line" in entries[expected["missing"]]["listed_in"]
    assert "'predicted' not in ecotaxa.statuses" in entries[expected["predicted"]]["reason"]
    assert expected["predicted"] not in set(manifest["path"])
    assert entries[expected["secondary"]]["reason"].startswith("secondary image")
    assert entries[expected["unlisted"]]["reason"] == "image not listed in any EcoTaxa table"
    assert entries["sample_a/.DS_Store"]["reason"] == "hidden file"
    files_on_disk = sum(len(files) for _, _, files in os.walk(raw))
    assert report["files_seen"] == files_on_disk == sum(report["summary"].values())
    split_dir = tmp_path / "split"
    split_stage.main(["--params", str(params), "--manifest", str(tmp_path / "out" / "manifest.csv"),
                      "--out-dir", str(split_dir), "--metrics", str(tmp_path / "split.json")])
    parts = {s: pd.read_csv(split_dir / f"{s}.csv", keep_default_na=False) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(manifest)
    assert all(set(p["class"]) == set(expected["classes"]) for p in parts.values())


def test_statuses_category_column_and_mapping_are_params(tmp_path):
    raw = tmp_path / "export"
    expected = make_ecotaxa_export(raw)
    manifest, _, _ = run_filter(tmp_path / "a", raw, statuses=["validated", "predicted"])
    assert expected["predicted"] in set(manifest["path"])
    manifest, _, _ = run_filter(tmp_path / "b", raw, category="object_annotation_hierarchy")
    assert set(manifest["class"]) == set(expected["hierarchy"].values())
    pd.DataFrame({"ecotaxa": ["Copepoda", "Diatomea"], "class": ["Crustacea", ""]}).to_csv(raw / "map.csv", index=False)
    manifest, report, _ = run_filter(tmp_path / "c", raw, mapping="map.csv")
    assert set(manifest["class"]) == {"Crustacea", NON_ASCII_TAXON}
    reasons = report["ignored"]["count_by_reason"]
    assert reasons["category 'Diatomea' mapped to no class in ecotaxa.mapping"] == expected["classes"]["Diatomea"]
    assert reasons["ecotaxa.mapping file"] == 1
    outside = tmp_path / "map.csv"
    outside.write_text("ecotaxa,class\nCopepoda,X\n")
    with pytest.raises(UserError, match="inside data.raw"):
        run_filter(tmp_path / "d", raw, mapping=str(outside))


def test_the_validator_accepts_what_the_writer_writes_and_names_each_broken_rule(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    columns = {"img_file_name": "[t]", "img_rank": "[f]", "object_id": "[t]", "object_annotation_status": "[t]",
               "object_annotation_category": "[t]", "object_classif_score": "[f]"}
    good = {"img_file_name": "img/a.png", "img_rank": 0, "object_id": "o1", "object_annotation_status": "predicted",
            "object_annotation_category": "Copepoda\tcalanoid", "object_classif_score": 0.93}
    write_ecotaxa_tsv(tmp_path / "ecotaxa_ok.tsv", columns, [good])
    assert validate_ecotaxa_tsv(tmp_path / "ecotaxa_ok.tsv") == []
    bad_rows = [good, {**good, "img_file_name": "img/gone.png", "object_classif_score": "high"},
                {**good, "object_id": "o2", "object_annotation_category": "", "img_file_name": "../a.png"}]
    write_ecotaxa_tsv(tmp_path / "results.tsv", {**columns, "Bad Name": "[x]"}, bad_rows)
    problems = "\n".join(validate_ecotaxa_tsv(tmp_path / "results.tsv"))
    for expected in ("not ecotaxa_*.tsv", "'Bad Name' is not lower case", "'Bad Name' does not start with",
                     "type '[x]'", "object_classif_score is 'high', not a number", "'o1' appears more than once",
                     "image 'img/gone.png' not found", "'../a.png' is not a relative path",
                     "predicted object without object_annotation_category"):
        assert expected in problems, expected
    (tmp_path / "ecotaxa_one_row.tsv").write_text("object_id\n", encoding="utf-8")
    assert "fewer than two rows" in validate_ecotaxa_tsv(tmp_path / "ecotaxa_one_row.tsv")[0]


def test_rows_without_an_object_id_are_separate_objects_and_predict_marks_them(tmp_path):
    from plankton_transfer.data.ecotaxa import read_rows
    from plankton_transfer.data.sources import list_inputs
    (tmp_path / "ecotaxa_x.tsv").write_text("object_id\timg_file_name\n[t]\t[t]\n\ta.jpg\n\tb.jpg\nc\tc.jpg\n")
    for name in "abc":
        (tmp_path / f"{name}.jpg").write_bytes(b"x")
    rows, _ = read_rows(tmp_path)
    assert [row.main for row in rows] == [True, True, True]
    errors = [item.error for item in list_inputs(tmp_path, "ecotaxa").items]
    assert ["empty object_id" in e for e in errors] == [True, True, False]


def test_a_name_mapping_that_gives_one_name_two_targets_or_lacks_a_column_is_one_line(tmp_path):
    from plankton_transfer.data.ecotaxa import read_name_mapping

    path = tmp_path / "map.csv"
    path.write_text("ecotaxa,class\nCalanoida,Copepoda\n Calanoida ,Diatom\n", encoding="utf-8")
    conflict = r"^ecotaxa.mapping .*map.csv maps 'Calanoida' to both 'Copepoda' and 'Diatom'; keep one line$"
    with pytest.raises(UserError, match=conflict):
        read_name_mapping(path, "ecotaxa", "class", "ecotaxa.mapping")
    with pytest.raises(UserError, match=r"^--taxon-names .*map.csv needs the columns class and taxon"):
        read_name_mapping(path, "class", "taxon", "--taxon-names")
    path.write_text("class,ecotaxa\nCopepoda,Calanoida\nCopepoda,Calanoida\n", encoding="utf-8")
    assert read_name_mapping(path, "class", "ecotaxa", "--taxon-names") == {"Copepoda": "Calanoida"}
