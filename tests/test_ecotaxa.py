"""EcoTaxa in and out: training from an unzipped export (filter and split stages), and the
validator every table the code writes is checked with."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from plankton_transfer.data.ecotaxa_tsv import check_upload, table_text
from plankton_transfer.errors import UserError
from stages import filter as filter_stage
from stages import split as split_stage
from tests.conftest import write_params
from tests.field_data import NON_ASCII_TAXON, make_ecotaxa_export


def run_filter(tmp_path, raw, **ecotaxa):
    tmp_path.mkdir(parents=True, exist_ok=True)
    params = write_params(tmp_path / "params.yaml", data={"raw": str(raw)}, ecotaxa=ecotaxa,
                          filter={"min_images_per_class": 3})
    out = tmp_path / "out"
    filter_stage.main(["--params", str(params), "--manifest", str(out / "manifest.csv"), "--report",
                       str(out / "report.json"), "--cache-file",
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
    assert (manifest["sample"] == manifest["path"].str.split("/").str[0]).all()  # sample_id, for per-sample counts
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
                      "--out-dir", str(split_dir)])
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


def write_upload(path, columns: dict[str, str], rows: list[dict], images: dict[str, bytes], bom: bool = True):
    import zipfile

    text = table_text(columns, rows)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ecotaxa_t.tsv", text.encode("utf-8") if bom else text.lstrip("\ufeff").encode("utf-8"))
        for name, data in images.items():
            z.writestr(name, data)
    return path


def png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_upload_check_accepts_what_the_writer_writes_and_names_each_broken_rule(tmp_path):
    """pyecotaxa (EcoTaxa's client library) for names and the *_id rule, EcoTaxa's importer rules
    (TSVFile.py, Image.py) for the rest."""
    columns = {"object_id": "[t]", "img_file_name": "[t]", "object_annotation_status": "[t]",
               "object_annotation_category": "[t]", "object_classif_score": "[f]", "process_id": "[t]",
               "process_classifier": "[t]"}
    good = {"img_file_name": "img/a.png", "object_id": "o1", "object_annotation_status": "predicted",
            "object_annotation_category": "Copepoda\tcalanoid", "object_classif_score": 0.93, "process_id": "p",
            "process_classifier": "x"}
    assert check_upload(write_upload(tmp_path / "ok.zip", columns, [good], {"img/a.png": png()})) == []
    bad_rows = [good, good, {**good, "img_file_name": "img/gone.png", "object_classif_score": "high", "object_id": "o3"},
                {**good, "object_id": "o2", "object_annotation_category": "", "img_file_name": "img/a.tif"}]
    no_process_id = {k: v for k, v in columns.items() if k != "process_id"}
    problems = "\n".join(check_upload(write_upload(tmp_path / "bad.zip", no_process_id, bad_rows,
                                                   {"img/a.png": png(), "img/a.tif": b"II*\x00"}, bom=False)))
    for expected in ("pyecotaxa: ", "process_id", "no UTF-8 byte-order mark", "object_classif_score is 'high', not a number",
                     "'o1' with image 'img/a.png' listed 2 times", "image 'img/gone.png' not in the upload",
                     "'img/a.tif' is not PNG, JPEG or GIF", "a status needs a category"):
        assert expected in problems, expected


def test_an_unclosed_quote_in_a_cell_is_one_line_naming_the_table_line(tmp_path):
    """T6: a tool that does not quote wrote '"big one'; read as a quoted cell it would swallow rows."""
    from plankton_transfer.data.ecotaxa import read_table

    lines = ["object_id\timg_file_name\tobject_comment", *[f"o{i}\timgs/{i}.jpg\tok" for i in range(2)],
             'o2\timgs/2.jpg\t"big one', *[f"o{i}\timgs/{i}.jpg\tok" for i in range(3, 7)], 'o7\timgs/7.jpg\ttail 5" long']
    (tmp_path / "ecotaxa_q.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"ecotaxa_q.tsv line 4: a cell opens a quote"):
        read_table(tmp_path / "ecotaxa_q.tsv")
    quoted = ["object_id\timg_file_name", '"o1"\t"imgs/1.jpg"', '"o2"\t"imgs/2.jpg"']  # EcoTaxa's own quoting
    (tmp_path / "ecotaxa_ok.tsv").write_text("\n".join(quoted) + "\n", encoding="utf-8")
    assert read_table(tmp_path / "ecotaxa_ok.tsv")[0]["object_id"].tolist() == ["o1", "o2"]


def test_a_folder_link_leaving_the_export_is_refused_as_for_class_folders(tmp_path):
    """T5: DVC would not see changes behind the link."""
    make_ecotaxa_export(tmp_path / "export", per_class=4)
    outside = tmp_path / "outside"
    (tmp_path / "export" / "sample_a" / "images").rename(outside)
    os.symlink(outside, tmp_path / "export" / "sample_a" / "images")
    with pytest.raises(UserError, match="folder links leaving .*sample_a/images"):
        run_filter(tmp_path / "f", tmp_path / "export")


def test_one_image_listed_under_two_categories_is_a_label_conflict(tmp_path):
    """T31: the same rule as one image filed in two class folders: every copy is dropped."""
    make_ecotaxa_export(tmp_path / "export", per_class=4)
    table = tmp_path / "export" / "sample_b" / "ecotaxa_sample_b.tsv"
    lines = table.read_text(encoding="utf-8").splitlines()
    first = lines[1].split("\t")  # sample_b has no types row
    columns = lines[0].split("\t")
    relabelled = dict(zip(columns, first)) | {"object_id": "again", "object_annotation_category": "Diatomea"}
    table.write_text("\n".join([*lines, "\t".join(relabelled[c] for c in columns)]) + "\n", encoding="utf-8")
    manifest, report, _ = run_filter(tmp_path / "f", tmp_path / "export")
    path = "sample_b/" + dict(zip(columns, first))["img_file_name"]
    assert path not in set(manifest["path"])
    assert [sorted(c["classes"]) for c in report["label_conflicts"]] == [["Copepoda", "Diatomea"]]


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
