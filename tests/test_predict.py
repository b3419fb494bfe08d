"""plankton-predict where the images are: folders with bad files, EcoTaxa exports, refused
outputs and broken model files; the results folder replaced as one set; the EcoTaxa upload
checked with pyecotaxa (EcoTaxa's client library) and EcoTaxa's importer rules."""
from __future__ import annotations

import dataclasses
import errno
import io
import os
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from plankton_transfer.cli import predict
from plankton_transfer.data import predictions
from plankton_transfer.data.ecotaxa_tsv import check_upload
from plankton_transfer.errors import UserError
from tests.conftest import make_dataset, organism
from tests.field_data import make_ecotaxa_export, tiny_model, tiny_model_file

CPU = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", classes=("Copepoda", "Diatomea", "other"))


def upload(out):
    """The EcoTaxa upload of a results folder, checked by pyecotaxa and EcoTaxa's rules: the table,
    and every file of the zip by name."""
    (zip_path,) = out.glob("ecotaxa_*.zip")
    assert check_upload(zip_path) == []
    with zipfile.ZipFile(zip_path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    (name,) = [n for n in files if n.endswith(".tsv")]
    assert files[name].startswith("\ufeff".encode())  # EcoTaxa reads a table without it as Latin-1
    table = pd.read_csv(io.BytesIO(files[name]), sep="\t", skiprows=[1], keep_default_na=False, dtype=str,
                        encoding="utf-8-sig")
    return table, list(files), files


def test_a_folder_with_bad_files_gives_a_row_each_and_keeps_the_rest(tmp_path, model, capsys):
    images = make_dataset(tmp_path / "new", {"station_1": 3, "station_2": 2})
    (images / "station_1" / "deep").mkdir()
    (images / "station_2" / "station_2_000.jpg").rename(images / "station_1" / "deep" / "moved.jpg")
    (images / "truncated.jpg").write_bytes((images / "station_1" / "station_1_000.jpg").read_bytes()[:300])
    (images / "notes.png").write_text("not an image\n")
    os.symlink("gone.jpg", images / "dangling.jpg")
    os.symlink("loop2.jpg", images / "loop1.jpg")  # a file link loop (T9)
    os.symlink("loop1.jpg", images / "loop2.jpg")
    os.symlink("..", images / "station_1" / "loop")
    non_utf8 = os.fsencode(images) + b"/pl\xe4nkton.jpg"
    with open(non_utf8, "wb") as f:
        f.write((images / "station_1" / "station_1_001.jpg").read_bytes())
    (images / ".ipynb_checkpoints").mkdir()
    (images / ".ipynb_checkpoints" / "a-checkpoint.jpg").write_bytes(b"x")
    (images / ".DS_Store").write_bytes(b"\0")
    (images / "log.csv").write_text("a,b\n")
    out = tmp_path / "results" / "new"
    table = predict.main(["--model", str(model), "--input", str(images), "--out", str(out), "--top-k", "2", *CPU])
    errors = dict(zip(table["id"], table["error"]))
    good = {"station_1/station_1_000.jpg", "station_1/station_1_001.jpg", "station_1/station_1_002.jpg",
            "station_1/deep/moved.jpg", "station_2/station_2_001.jpg"}
    assert {k for k, v in errors.items() if not v} == good
    assert "truncated or corrupt" in errors["truncated.jpg"] and "not an image" in errors["notes.png"]
    assert "not valid UTF-8" in errors["pl\\xe4nkton.jpg"] and "broken link" in errors["dangling.jpg"]
    assert "broken link" in errors["loop1.jpg"] and "broken link" in errors["loop2.jpg"]
    assert len(table) == len(good) + 6  # hidden files, checkpoints and the CSV left out; the loop entered once
    written = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(written.columns) == ["id", "file", "sample", "predicted", "probability", "needs_review",
                                     "review_reason", "threshold", "top2_class", "top2_probability", "error"]
    ok = table[table["error"] == ""]
    assert (ok["needs_review"] == (ok["probability"] < 0.5)).all()  # the model file's thresholds are 0.5
    assert (ok["probability"] >= ok["top2_probability"]).all()
    assert (ok[ok["needs_review"]]["review_reason"].str.startswith("probability under the class threshold")).all()
    summary = capsys.readouterr().out
    assert "5 images classified, 6 failed" in summary and "ignored" in summary and "images/s" in summary
    rows, names, _ = upload(out)
    assert set(rows["object_id"]) == {"new_" + p.replace("/", "_") for p in good}  # run-prefixed: unique in a project
    assert set(rows["object_annotation_status"]) == {"predicted"} and set(rows["process_id"]) != {""}
    assert set(rows["object_original_file"]) == good


def test_an_ecotaxa_export_is_classified_object_by_object(tmp_path, model, capsys):
    expected = make_ecotaxa_export(tmp_path / "export", per_class=2)
    names = tmp_path / "names.csv"
    names.write_text("class,ecotaxa\nCopepoda,Calanoida\n")
    out = tmp_path / "results" / "export"
    table = predict.main(["--model", str(model), "--input", str(tmp_path / "export"), "--out", str(out),
                          "--taxon-names", str(names), *CPU])
    assert len(table) == expected["objects"]  # main images only; labels and statuses ignored
    assert table.set_index("id").loc["obj_missing", "error"].startswith("missing image")
    rows, _, _ = upload(out)
    assert set(rows["object_id"]) == set(table[table["error"] == ""]["id"])  # EcoTaxa's own ids, kept
    assert set(rows["sample_id"]) == {"sample_a", "sample_b"}
    mapped = table.set_index("id").loc[rows["object_id"], "predicted"].replace({"Copepoda": "Calanoida"})
    assert rows["object_annotation_category"].tolist() == mapped.tolist()
    captured = capsys.readouterr()
    assert "images listed in no table 1" in captured.out  # images/unlisted.jpg: counted, not lost
    assert "read as EcoTaxa export (EcoTaxa table sample_a/ecotaxa_sample_a.tsv and 1 more)" in captured.err  # T20


def test_accented_names_and_formats_ecotaxa_refuses_pass_its_checks(tmp_path, model):
    """A folder with accented names and TIFF, BMP, WEBP and PNM files: EcoTaxa takes only PNG, JPEG
    and GIF and reads a table without a byte-order mark as Latin-1 (issue 17)."""
    images = tmp_path / "Diatomée"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, kind in (("éch_ü1.tif", "TIFF"), ("b.bmp", "BMP"), ("c.webp", "WEBP"), ("d.ppm", "PPM"),
                       ("e.gif", "GIF"), ("ç.jpg", "JPEG")):
        organism(rng, 0).save(images / name, format=kind)
    out = tmp_path / "out"
    predict.main(["--model", str(model), "--input", str(images), "--out", str(out), *CPU])
    rows, names, z = upload(out)
    assert len(rows) == 6
    converted = dict(zip(rows["object_original_file"], rows["img_file_name"]))
    assert converted["éch_ü1.tif"] == "images/éch_ü1.png" and converted["ç.jpg"] == "images/ç.jpg"
    assert converted["e.gif"] == "images/e.gif"
    assert {Image.open(io.BytesIO(z[n])).format for n in names if n.startswith("images/")} <= {"PNG", "JPEG", "GIF"}


def test_an_existing_folder_that_is_not_an_earlier_run_is_refused_and_untouched(tmp_path, model):
    """T1: predict never writes into a folder it did not make (a user's images, a user's table)."""
    images = make_dataset(tmp_path / "new", {"a": 2})
    station = tmp_path / "station"
    station.mkdir()
    (station / "img001.jpg").write_bytes(b"day 1")
    (station / "ecotaxa_export_1234.tsv").write_text("object_id\n[t]\nk1\n")
    for out, message in ((station, "was not written by a prediction run"), (images / "out", "inside the input"),
                         (images / "a", "was not written by a prediction run"), (tmp_path / "p.csv", "names a CSV"),
                         (tmp_path / ".", "was not written by a prediction run"),
                         (tmp_path / "new_out", None)):
        if message is None:  # a new folder holding the input: it would be replaced along with it
            os.symlink(images, tmp_path / "new_out")
            message = "exists and is not a folder"
        with pytest.raises(UserError, match=message) as err:
            predict.main(["--model", str(model), "--input", str(images), "--out", str(out), *CPU])
        assert "\n" not in str(err.value)
    assert (station / "img001.jpg").read_bytes() == b"day 1"
    assert sorted(p.name for p in station.iterdir()) == ["ecotaxa_export_1234.tsv", "img001.jpg"]
    assert sorted(p.name for p in images.rglob("*")) == ["a", "a_000.jpg", "a_001.jpg"]


def test_a_second_run_replaces_the_earlier_results_as_one_set_and_a_failed_run_changes_nothing(tmp_path, model,
                                                                                                monkeypatch):
    """T3, T10: the CSV, the upload and run.json always belong to one run; a full disk is one line."""
    out = tmp_path / "results"
    predict.main(["--model", str(model), "--input", str(make_dataset(tmp_path / "day1", {"a": 2})), "--out", str(out),
                  *CPU])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    day2 = make_dataset(tmp_path / "day2", {"b": 3}, seed=5)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predictions, "table_text", full_disk)  # dies after predictions.csv was written
    with pytest.raises(UserError, match="no space left on the disk") as err:
        predict.main(["--model", str(model), "--input", str(day2), "--out", str(out), *CPU])
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier set, whole
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # and no temporary left
    monkeypatch.undo()
    predict.main(["--model", str(model), "--input", str(day2), "--out", str(out), *CPU])
    rows, _, _ = upload(out)
    assert len(rows) == 3 and len(pd.read_csv(out / "predictions.csv")) == 3


def test_upload_images_are_copies_never_links_to_the_field_images(tmp_path, model):
    """T4, T21: editing the upload's copy never changes the original; a linked image is copied."""
    images = make_dataset(tmp_path / "new", {"a": 2})
    outside = tmp_path / "elsewhere.jpg"
    (images / "a" / "a_001.jpg").rename(outside)
    os.symlink(outside, images / "a" / "linked.jpg")
    out = tmp_path / "out"
    predict.main(["--model", str(model), "--input", str(images), "--out", str(out), *CPU])
    rows, names, z = upload(out)
    assert z["images/a/linked.jpg"] == outside.read_bytes()
    assert os.stat(images / "a" / "a_000.jpg").st_nlink == 1


def test_names_that_differ_only_by_tab_line_break_or_space_get_their_own_objects_and_images(tmp_path, model):
    """T15: 'x y', 'x\\ty' and 'x\\ny' are three images; their table cells must not collide."""
    images = tmp_path / "nl"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i, name in enumerate(("x y.jpg", "x\ty.jpg", "x\ny.jpg")):
        organism(rng, i).save(images / name)
    out = tmp_path / "out"
    predict.main(["--model", str(model), "--input", str(images), "--out", str(out), *CPU])
    rows, names, z = upload(out)
    assert len(set(rows["object_id"])) == 3 and len(set(rows["img_file_name"])) == 3
    contents = {z[n] for n in rows["img_file_name"]}
    assert len(contents) == 3  # three different images, each under its own name


@pytest.mark.parametrize("case", ["missing", "folder", "text", "truncated", "unknown name", "a list"])
def test_a_broken_model_file_is_one_line(tmp_path, model, case):
    images = make_dataset(tmp_path / "new", {"a": 1})
    path = {"missing": tmp_path / "modles" / "alexnet.pt", "folder": tmp_path, "text": tmp_path / "notes.pt",
            "truncated": tmp_path / "cut.pt", "unknown name": "alexnett", "a list": tmp_path / "list.pt"}[case]
    (tmp_path / "notes.pt").write_text("not a model\n")
    (tmp_path / "cut.pt").write_bytes(model.read_bytes()[:5000])
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(UserError) as err:
        predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "p"),
                      "--models-dir", str(tmp_path / "models"), *CPU])
    message = str(err.value)
    assert "\n" not in message and "weights_only=False" not in message
    assert str(path) in message
    if case == "a list":
        assert "holds a list, not the dictionary of tensors of a weight or model file" in message


EDITS = {  # T16: model files edited by hand
    "head shape": lambda m: dataclasses.replace(m, head=dataclasses.replace(m.head, weight=torch.zeros(3, 10))),
    "NaN head": lambda m: dataclasses.replace(m, head=dataclasses.replace(m.head, weight=m.head.weight * np.nan)),
    "temperature 0": lambda m: dataclasses.replace(m, calibration=dataclasses.replace(m.calibration, temperature=0.0)),
    "threshold text": lambda m: dataclasses.replace(m, thresholds=dataclasses.replace(
        m.thresholds, per_class={**m.thresholds.per_class, "a": "high"})),
    "preprocess zoom": lambda m: dataclasses.replace(m, input=dataclasses.replace(m.input, mode="zoom")),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_model_file_is_one_line_naming_it(tmp_path, edit):
    path = tmp_path / "evil.pt"
    EDITS[edit](tiny_model()).save(path)
    images = make_dataset(tmp_path / "new", {"a": 1})
    with pytest.raises(UserError, match=f"{path}: .*damaged or was edited") as err:
        predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "out"), *CPU])
    assert "\n" not in str(err.value)
    data = torch.load(path, weights_only=True)
    del data["head"]
    torch.save(data, path)
    with pytest.raises(UserError, match="missing field.*head"):
        predict.main(["--model", str(path), "--input", str(images), "--out", str(tmp_path / "out"), *CPU])


def test_the_command_prints_one_line_without_traceback_and_fails_when_nothing_was_classified(tmp_path, model,
                                                                                           monkeypatch, capsys):
    (tmp_path / "cut.pt").write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    make_dataset(tmp_path / "new", {"a": 1})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["plankton-predict", "--model", "cut.pt", "--input", "new", "--out", "p"])
    with pytest.raises(SystemExit) as exit_status:
        predict.run()  # the console script's entry point
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: cut.pt ")
    assert not (tmp_path / "p").exists()
    (tmp_path / "bad").mkdir()  # T23: every file failed
    (tmp_path / "bad" / "zero.jpg").write_bytes(b"")
    (tmp_path / "bad" / "text.png").write_text("hello")
    monkeypatch.setattr(sys, "argv", ["plankton-predict", "--model", str(model), "--input", "bad", "--out", "p2",
                                      *CPU])
    with pytest.raises(SystemExit) as exit_status:
        predict.run()
    assert exit_status.value.code == 2
    assert "none of the 2 images could be classified" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "p2" / "predictions.csv")) == 2  # the reasons are kept


def test_a_pipe_or_device_as_input_is_one_line(tmp_path, model):
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(UserError, match="neither a folder nor a regular file"):
        predict.main(["--model", str(model), "--input", str(tmp_path / "fifo.jpg"), "--out", str(tmp_path / "o"), *CPU])


def test_review_reasons_say_why_in_words_and_a_model_that_is_not_pretrained_flags_all():
    from plankton_transfer.models.inference import review_reasons

    model = tiny_model(("a", "b", "c"), thresholds={"a": 0.9, "b": None, "c": 0.4})
    reasons = review_reasons(model, np.array([0, 0, 1, 2, 2]), np.array([0.95, 0.5, 0.99, 0.4, 0.39]))
    assert reasons[0] == "" and reasons[3] == ""
    assert reasons[1] == "probability under the class threshold 0.9000"
    assert reasons[2] == "always reviewed: the backbone is NOT pretrained"  # tiny_model's backbone is random
    pretrained = dataclasses.replace(model, weights=dataclasses.replace(model.weights, pretrained=True))
    assert review_reasons(pretrained, np.array([1]), np.array([0.99]))[0].startswith(
        "always reviewed: too few validation images support")


def test_taxon_names_with_an_empty_ecotaxa_name_are_refused_before_any_work(tmp_path, model):
    names = tmp_path / "names.csv"
    names.write_text("class,ecotaxa\nCopepoda,\n")  # T30
    images = make_dataset(tmp_path / "new", {"a": 1})
    with pytest.raises(UserError, match="no EcoTaxa name for Copepoda"):
        predict.main(["--model", str(model), "--input", str(images), "--out", str(tmp_path / "o"),
                      "--taxon-names", str(names), *CPU])


@pytest.mark.parametrize("flag", [["--batch-size", "0"], ["--top-k", "0"], ["--workers", "-2"]])
def test_a_bad_number_on_the_command_line_names_the_option_not_params_yaml(tmp_path, model, flag, capsys):
    with pytest.raises(SystemExit):
        predict.main(["--model", str(model), "--input", str(tmp_path), "--out", str(tmp_path / "p"), *flag])
    err = capsys.readouterr().err
    assert f"argument {flag[0]}" in err and "params.yaml" not in err


def test_a_backbone_name_is_looked_up_in_models_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "alexnet.pt").write_bytes(b"x")
    (tmp_path / "alexnet").mkdir()  # e.g. plankton-export --out-dir .
    monkeypatch.chdir(tmp_path)
    assert predict.model_file("alexnet", tmp_path / "models") == tmp_path / "models" / "alexnet.pt"


def test_a_foreign_params_file_in_the_working_folder_is_named_with_the_way_out(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "new", {"a": 1})
    (tmp_path / "params.yaml").write_text("pretrained: {foo: 1}\n")  # another project's params file
    with pytest.raises(UserError, match=r"unknown .*foo.* \(read from params.yaml in the working folder: pass "
                                        r"--params"):
        predict.main(["--model", str(model), "--input", "new", "--out", str(tmp_path / "p"), *CPU])


def test_images_open_as_the_model_file_says_not_as_the_working_folder_says(tmp_path, model, monkeypatch):
    """T33: transparency is flattened onto the background the model was trained with."""
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[10:30, 10:40] = (200, 30, 30, 255)  # an organism on a transparent background
    (tmp_path / "in").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in" / "a.png")
    dark = tmp_path / "dark.pt"
    m = tiny_model(("Copepoda", "Diatomea", "other"))
    dataclasses.replace(m, input=dataclasses.replace(m.input, image=dataclasses.replace(
        m.input.image, background=(0, 0, 0)))).save(dark)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("image: {background: [255, 255, 255]}\n")  # ignored for opening images
    light = predict.main(["--model", str(model), "--input", "in", "--out", "light", *CPU])
    black = predict.main(["--model", str(dark), "--input", "in", "--out", "black", *CPU])
    assert light["probability"][0] != black["probability"][0]
