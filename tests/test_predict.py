"""plankton-predict where the images are: folders with bad files, EcoTaxa exports, refused
outputs and broken model files (issue 9: no lost files, no tracebacks)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from plankton_transfer.cli import predict
from plankton_transfer.data.ecotaxa_tsv import validate_ecotaxa_tsv
from plankton_transfer.errors import UserError
from tests.conftest import make_dataset
from tests.field_data import make_ecotaxa_export, tiny_model_file

CPU = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", classes=("Copepoda", "Diatomea", "other"))


def tsv_rows(tsv):
    assert validate_ecotaxa_tsv(tsv) == []
    return pd.read_csv(tsv, sep="\t", skiprows=[1], keep_default_na=False, dtype=str)


def test_a_folder_with_bad_files_gives_a_row_each_and_keeps_the_rest(tmp_path, model, capsys):
    images = make_dataset(tmp_path / "new", {"station_1": 3, "station_2": 2})
    (images / "station_1" / "deep").mkdir()
    (images / "station_2" / "station_2_000.jpg").rename(images / "station_1" / "deep" / "moved.jpg")
    (images / "truncated.jpg").write_bytes((images / "station_1" / "station_1_000.jpg").read_bytes()[:300])
    (images / "notes.png").write_text("not an image\n")
    os.symlink("gone.jpg", images / "dangling.jpg")
    os.symlink("..", images / "station_1" / "loop")
    non_utf8 = os.fsencode(images) + b"/pl\xe4nkton.jpg"
    with open(non_utf8, "wb") as f:
        f.write((images / "station_1" / "station_1_001.jpg").read_bytes())
    (images / ".ipynb_checkpoints").mkdir()
    (images / ".ipynb_checkpoints" / "a-checkpoint.jpg").write_bytes(b"x")
    (images / ".DS_Store").write_bytes(b"\0")
    (images / "log.csv").write_text("a,b\n")
    out = tmp_path / "results" / "new.csv"
    table = predict.main(["--model", str(model), "--input", str(images), "--out", str(out), "--top-k", "2", *CPU])
    errors = dict(zip(table["id"], table["error"]))
    good = {"station_1/station_1_000.jpg", "station_1/station_1_001.jpg", "station_1/station_1_002.jpg",
            "station_1/deep/moved.jpg", "station_2/station_2_001.jpg"}
    assert {k for k, v in errors.items() if not v} == good
    assert "truncated or corrupt" in errors["truncated.jpg"] and "not an image" in errors["notes.png"]
    assert "not valid UTF-8" in errors["pl\\xe4nkton.jpg"] and "broken link" in errors["dangling.jpg"]
    assert len(table) == len(good) + 4  # hidden files, checkpoints and the CSV left out; the loop entered once
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written.columns) == ["id", "file", "predicted", "probability", "needs_review", "threshold",
                                     "top2_class", "top2_probability", "error"]
    ok = table[table["error"] == ""]
    assert (ok["needs_review"] == (ok["probability"] < 0.5)).all()  # the model file's thresholds are 0.5
    assert (ok["probability"] >= ok["top2_probability"]).all()
    summary = capsys.readouterr().out
    assert "5 images classified, 4 failed" in summary and "ignored" in summary and "images/s" in summary
    rows = tsv_rows(out.with_name("ecotaxa_new.tsv"))
    assert set(rows["object_id"]) == {p.replace("/", "_") for p in good}
    assert set(rows["object_annotation_status"]) == {"predicted"}


def test_an_ecotaxa_export_is_classified_object_by_object(tmp_path, model, capsys):
    expected = make_ecotaxa_export(tmp_path / "export", per_class=2)
    names = tmp_path / "names.csv"
    names.write_text("class,ecotaxa\nCopepoda,Calanoida\n")
    out = tmp_path / "results" / "export.csv"
    table = predict.main(["--model", str(model), "--input", str(tmp_path / "export"), "--out", str(out),
                          "--taxon-names", str(names), *CPU])
    assert len(table) == expected["objects"]  # main images only; labels and statuses ignored
    assert table.set_index("id").loc["obj_missing", "error"].startswith("missing image")
    rows = tsv_rows(out.with_name("ecotaxa_export.tsv"))
    assert set(rows["object_id"]) == set(table[table["error"] == ""]["id"])
    assert set(rows["sample_id"]) == {"sample_a", "sample_b"}
    mapped = table.set_index("id").loc[rows["object_id"], "predicted"].replace({"Copepoda": "Calanoida"})
    assert rows["object_annotation_category"].tolist() == mapped.tolist()
    assert "images listed in no table 1" in capsys.readouterr().out  # images/unlisted.jpg: counted, not lost


def test_an_output_that_is_a_folder_or_inside_the_input_is_refused_and_nothing_is_touched(tmp_path, model):
    images = make_dataset(tmp_path / "new", {"a": 2})
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("field notes")
    for out, message in ((results, "is a folder"), (images / "out.csv", "inside the input folder"),
                         (images / "a" / "p.csv", "inside the input folder")):
        with pytest.raises(UserError, match=message) as err:
            predict.main(["--model", str(model), "--input", str(images), "--out", str(out), *CPU])
        assert "\n" not in str(err.value)
    assert (results / "keep.txt").read_text() == "field notes"
    assert sorted(p.name for p in results.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in images.rglob("*")) == ["a", "a_000.jpg", "a_001.jpg"]


@pytest.mark.parametrize("case", ["missing", "folder", "text", "truncated", "unknown name", "a list"])
def test_a_broken_model_file_is_one_line(tmp_path, model, case):
    images = make_dataset(tmp_path / "new", {"a": 1})
    path = {"missing": tmp_path / "modles" / "alexnet.pt", "folder": tmp_path, "text": tmp_path / "notes.pt",
            "truncated": tmp_path / "cut.pt", "unknown name": "alexnett", "a list": tmp_path / "list.pt"}[case]
    (tmp_path / "notes.pt").write_text("not a model\n")
    (tmp_path / "cut.pt").write_bytes(model.read_bytes()[:5000])
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(UserError) as err:
        predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "p.csv"),
                      "--models-dir", str(tmp_path / "models"), *CPU])
    message = str(err.value)
    assert "\n" not in message and "weights_only=False" not in message
    assert str(path) in message
    if case == "a list":
        assert "holds a list, not the dictionary of tensors of a weight or model file" in message


def test_the_command_prints_one_line_without_traceback(tmp_path, model, monkeypatch, capsys):
    (tmp_path / "cut.pt").write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    make_dataset(tmp_path / "new", {"a": 1})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["plankton-predict", "--model", "cut.pt", "--input", "new", "--out", "p.csv"])
    with pytest.raises(SystemExit) as exit_status:
        predict.run()  # the console script's entry point
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: cut.pt ")
    assert not (tmp_path / "p.csv").exists()


def test_needs_review_follows_each_class_threshold_and_a_class_without_one(tmp_path):
    from plankton_transfer.models.thresholds import review_flags

    record = {"classes": ["a", "b", "c"], "thresholds": {"per_class": {"a": 0.9, "b": None, "c": 0.4}}}
    flags = review_flags(record, np.array([0, 0, 1, 2, 2]), np.array([0.95, 0.5, 0.99, 0.4, 0.39]))
    assert flags.tolist() == [False, True, True, False, True]
    assert review_flags({"classes": ["a"]}, np.array([0]), np.array([1.0])).tolist() == [True]  # no thresholds


def test_an_out_that_is_a_file_the_run_reads_or_not_a_csv_is_refused_and_kept(tmp_path, model):
    images = make_dataset(tmp_path / "new", {"a": 1})
    image = images / "a" / "a_000.jpg"
    names = tmp_path / "names.csv"
    names.write_text("class,ecotaxa\nCopepoda,Copepoda<Maxillopoda\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes")
    for source, out in ((image, image), (images, model), (images, names), (images, notes)):
        before = out.read_bytes()
        with pytest.raises(UserError, match="--out") as err:
            predict.main(["--model", str(model), "--input", str(source), "--out", str(out),
                          "--taxon-names", str(names), *CPU])
        assert "\n" not in str(err.value)
        assert out.read_bytes() == before


def test_a_second_run_with_nothing_classified_leaves_no_earlier_ecotaxa_table(tmp_path, model):
    out = tmp_path / "results" / "p.csv"
    predict.main(["--model", str(model), "--input", str(make_dataset(tmp_path / "new", {"a": 2})), "--out", str(out),
                  *CPU])
    assert len(tsv_rows(out.with_name("ecotaxa_p.tsv"))) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cut.jpg").write_bytes(b"xx")
    table = predict.main(["--model", str(model), "--input", str(tmp_path / "bad"), "--out", str(out), *CPU])
    assert list(table["error"] != "") == [True]
    assert len(tsv_rows(out.with_name("ecotaxa_p.tsv"))) == 0


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--top-k", "0"], ["--workers", "-2"]])
def test_a_bad_number_on_the_command_line_names_the_option_not_params_yaml(tmp_path, model, flag, capsys):
    with pytest.raises(SystemExit):
        predict.main(["--model", str(model), "--input", str(tmp_path), "--out", str(tmp_path / "p.csv"), *flag])
    err = capsys.readouterr().err
    assert f"argument {flag[0]}" in err and "params.yaml" not in err


def test_a_file_name_with_a_tab_or_line_break_gets_a_valid_ecotaxa_table(tmp_path, model):
    images = make_dataset(tmp_path / "new", {"a": 2})
    (images / "a" / "a_000.jpg").rename(images / "a" / "tab\there.jpg")
    (images / "a" / "a_001.jpg").rename(images / "a" / "line\nbreak.jpg")
    out = tmp_path / "results" / "p.csv"
    predict.main(["--model", str(model), "--input", str(images), "--out", str(out), *CPU])
    assert len(tsv_rows(out.with_name("ecotaxa_p.tsv"))) == 2  # tsv_rows checks every image is beside the table


def test_a_backbone_name_is_looked_up_in_models_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "alexnet.pt").write_bytes(b"x")
    (tmp_path / "alexnet").mkdir()  # e.g. plankton-export --out-dir .
    monkeypatch.chdir(tmp_path)
    assert predict.model_file("alexnet", tmp_path / "models") == tmp_path / "models" / "alexnet.pt"


def test_a_foreign_params_file_in_the_working_folder_is_named_with_the_way_out(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("foo: 1\n")  # another project's params file
    with pytest.raises(UserError, match=r"unknown .*foo.* \(read from params.yaml in the working folder: pass "
                                        r"--params"):
        predict.main(["--model", str(model), "--input", str(tmp_path), "--out", str(tmp_path / "p.csv")])
