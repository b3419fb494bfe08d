"""Regression tests for the red-team review's new defects (docs of the review: Part 2, T7-T32):
each test fails if the behaviour the review found comes back."""
from __future__ import annotations

import builtins
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from plankton_transfer.cli import predict
from plankton_transfer.data.images import BadImage, check_image
from plankton_transfer.errors import UserError
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import read_params, section
from plankton_transfer.params.image import ImageParams
from tests.conftest import make_dataset, png_header_only, project_params, write_params
from tests.field_data import V2_FORMAT, make_ecotaxa_export, tiny_model, tiny_model_file, v2_columns, write_bin
from tests.pipeline_repo import make_repo, run

CPU = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", classes=("Copepoda", "Diatomea", "other"))


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# T7: crop mode and a thin image


def test_T7_crop_mode_refuses_a_thin_image_before_resizing_it():
    from plankton_transfer.data.input_spec import Preprocess
    from plankton_transfer.data.preprocess import make_transform

    transform = make_transform(Preprocess(), "crop", ImageParams())
    thin = Image.new("RGB", (20000, 4), (200, 30, 30))  # Resize(256) would make it 1,280,000 x 256
    with pytest.raises(BadImage, match=r"too elongated for crop mode: 20000x4 would be resized to 1280000x256 .*"
                                       r"> image\.max_pixels \(50000000\); use extract.preprocess: pad") as err:
        transform(thin)
    assert err.value.kind == "too elongated for crop mode"
    assert tuple(transform(Image.new("RGB", (300, 40))).shape) == (3, 224, 224)  # elongated, but within the limit


def test_T7_predict_with_a_crop_mode_model_gives_the_thin_image_an_error_row(tmp_path):
    m = tiny_model(("Copepoda", "Diatomea", "other"))
    crop = tmp_path / "crop.pt"
    dataclasses.replace(m, input=dataclasses.replace(m.input, mode="crop")).save(crop)
    images = make_dataset(tmp_path / "new", {"a": 2})
    Image.new("RGB", (20000, 4), (200, 30, 30)).save(images / "thin.png")
    table = predict.main(["--model", str(crop), "--input", str(images), "--out", str(tmp_path / "out"), *CPU])
    errors = dict(zip(table["id"], table["error"]))
    assert errors["thin.png"].startswith("too elongated for crop mode: 20000x4")
    assert errors["a/a_000.jpg"] == errors["a/a_001.jpg"] == ""


def test_T7_with_device_decoding_a_thin_jpeg_is_left_to_pillow_which_refuses_it():
    """decode: device resizes on the GPU, where nothing would refuse a 60000 x 4 strip: such a file
    goes through the workers' Pillow path (CentreCrop's one-line refusal) instead."""
    from plankton_transfer.data.input_spec import Preprocess
    from plankton_transfer.data.loading import device_decodable
    from plankton_transfer.data.preprocess import crop_fits

    rows = pd.DataFrame({"format": ["JPEG", "JPEG", "JPEG", "PNG"], "converted": [False, False, True, False],
                         "width": [400, 60000, 400, 400], "height": [300, 4, 300, 300]})
    pre, limit = Preprocess(), ImageParams().max_pixels
    fits = lambda w, h: crop_fits(w, h, pre, limit)  # noqa: E731
    assert device_decodable(rows, "device", fits) == [True, False, False, False]
    assert device_decodable(rows, "device") == [True, True, False, False]  # pad mode: the letterbox is bounded
    assert device_decodable(rows, "auto", fits) == [False] * 4
    assert not crop_fits(20000, 4, pre, limit) and crop_fits(4, 4, pre, limit) and crop_fits(300, 40, pre, limit)


# T8, T32: absurd IFCB .adc values


ROI_LIMIT = 10_000_000  # no test ROI needs more bytes than this; a bigger read is the memory bomb


class GuardedFile:
    """A file whose read() refuses sizes no real ROI of these bins has (instead of allocating them)."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def seek(self, *args):
        return self.f.seek(*args)

    def read(self, size=-1):
        assert 0 <= size <= ROI_LIMIT, f"read({size}) of a .roi: the claimed ROI size was trusted"
        return self.f.read(size)


def absurd_bins(folder: Path) -> dict[str, str]:
    """One bin per damaged .adc row (row 1), each with two good ROIs after it; returns the
    expected reason by ROI id."""
    width_col, height_col, start_col = v2_columns(V2_FORMAT)
    rng = np.random.default_rng(0)
    cases = {  # (width, height, start byte) in row 1 -> the reason's start
        "inf": (("inf", "40", "0"), "D20240101T110000_IFCB101.adc row 1 has no ROI width"),
        "nan": (("nan", "40", "0"), "D20240101T120000_IFCB101.adc row 1 has no ROI width"),
        "e300": (("1e300", "1", "0"), "D20240101T130000_IFCB101.adc row 1: ROI size 1e300x1 is beyond any image"),
        "negative": (("-5", "40", "0"), "D20240101T140000_IFCB101.adc row 1: negative ROI size -5x40"),
        "huge": (("400000", "400000", "0"), "too large: 400000x400000 pixels > image.max_pixels (50000000)"),
        "sparse": (("40000", "40000", "0"), "too large: 40000x40000 pixels > image.max_pixels (50000000)"),
        "past_end": (("5000", "5000", "0"), "unreadable ROI: D20240101T170000_IFCB101.roi ends before this ROI's "
                                            "5000x5000 bytes"),
        "start": (("10", "10", "1e300"), "D20240101T180000_IFCB101.adc row 1: start byte 1e300 is beyond any file"),
        "far": (("10", "10", "99999999999"), "unreadable ROI: D20240101T190000_IFCB101.roi ends before this ROI's"),
    }
    expected = {}
    for hour, (name, (cells, reason)) in zip(range(11, 20), cases.items()):
        lid = f"D20240101T{hour}0000_IFCB101"
        good = write_bin(folder / name, lid, [rng.integers(0, 256, (30, 40), dtype=np.uint8) for _ in range(3)],
                         schema=2)
        adc = folder / name / f"{lid}.adc"
        rows = [line.split(",") for line in adc.read_text().splitlines()]
        rows[0][width_col], rows[0][height_col], rows[0][start_col] = cells
        adc.write_text("\n".join(",".join(r) for r in rows) + "\n")
        if name == "sparse":  # a 1.7 GB .roi that takes no disk space: reading the claimed ROI would take 1.6 GB
            with open(folder / name / f"{lid}.roi", "r+b") as f:
                f.truncate(1_700_000_000)
        expected[f"{lid}_00001"] = reason
        expected |= {roi_id: "" for roi_id in list(good)[1:]}
    return expected


def test_T8_T32_absurd_adc_values_give_one_error_row_each_and_never_read_the_claimed_size(tmp_path, model,
                                                                                         monkeypatch):
    from plankton_transfer.data import ifcb
    from plankton_transfer.data.sources import list_inputs, roi_pixels

    expected = absurd_bins(tmp_path / "bins")
    monkeypatch.setattr(ifcb, "open", lambda *a, **k: GuardedFile(builtins.open(*a, **k)), raising=False)
    inputs = list_inputs(tmp_path / "bins")
    assert inputs.kind == "ifcb" and not inputs.ignored.get("IFCB rows without an image (width or height 0)")
    for item in inputs.items:  # each damaged ROI fails alone, with its reason, before any read
        if item.roi is not None and expected[item.id]:
            with pytest.raises(BadImage):
                roi_pixels(item)
    table = predict.main(["--model", str(model), "--input", str(tmp_path / "bins"), "--out", str(tmp_path / "out"),
                          *CPU])
    errors = dict(zip(table["id"], table["error"]))
    assert set(errors) == set(expected)  # every row of every bin: the damaged ones and the 16 good ones
    for roi_id, reason in expected.items():
        assert errors[roi_id].startswith(reason) if reason else errors[roi_id] == "", (roi_id, errors[roi_id])
    assert "\n" not in "".join(errors.values()) and max(map(len, errors.values())) < 200


# T11: YAML 1.2 floats


def test_T11_floats_in_exponent_form_are_numbers(tmp_path):
    """As DVC writes them after ``dvc exp run -S train.lr=0.00001`` (YAML 1.2), or by hand."""
    from plankton_transfer.params.train import TrainParams

    others = project_params()
    del others["train"]
    params = tmp_path / "p.yaml"
    for lr, expected in (("1e-3", (0.001,)), ("1e-05", (1e-05,)), ("[1e-5, 1.0e+1, 3E-4]", (1e-05, 10.0, 3e-4))):
        params.write_text(yaml.safe_dump(others, sort_keys=False) + f"train:\n  lr: {lr}\n  weight_decay: 1E-5\n")
        loaded = read_params(params)
        train = section(TrainParams, loaded, "train")
        assert tuple(train.lrs) == expected and all(isinstance(v, float) for v in train.lrs)
        assert train.weight_decay == 1e-5
        assert loaded["base"]["seed"] == 42 and isinstance(loaded["base"]["seed"], int)  # integers stay integers
        assert loaded["data"]["raw"] == others["data"]["raw"]


# T13: base.seed


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999999])
def test_T13_a_seed_out_of_range_is_one_line_naming_base_seed_before_any_work(tmp_path, seed):
    from stages import filter as filter_stage

    raw = make_dataset(tmp_path / "raw", {"a": 2, "b": 2})
    params = write_params(tmp_path / "p.yaml", base={"seed": seed})
    with pytest.raises(UserError) as err:
        filter_stage.main(["--raw", str(raw), "--manifest", str(tmp_path / "manifest.csv"), "--report",
                           str(tmp_path / "report.json"), "--cache-file", str(tmp_path / "cache.csv"),
                           "--params", str(params)])
    assert one_line(err).startswith(f"{params}: base.seed is {seed}; it must be >= 0 and <= 4294967295")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml", "raw"]  # nothing written
    assert section(BaseParams, {"base": {"seed": 2**32 - 1}}, "base").seed == 2**32 - 1


# T14: --out-dir inside the pipeline's folders


@pytest.mark.parametrize("out", ["data/features", "models/x", "metrics", "plots/export", "images"])
def test_T14_export_and_report_refuse_an_out_dir_inside_pipeline_folders(tmp_path, monkeypatch, out):
    from plankton_transfer.cli import export, report

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", data={"raw": "images"}, models=["alexnet"])
    for folder in ("data/features", "models", "metrics", "plots", "images/copepod"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    what = ("data.raw (images): the training images" if out == "images" else
            f"{out.split('/')[0]}/ (written by dvc repro)")
    for main in (export.main, report.main):
        with pytest.raises(UserError, match=re.escape(f"--out-dir {out} lies inside {what}; write it elsewhere")) \
                as err:
            main(["--out-dir", out])
        one_line(err)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written, dvc never run


def test_T14_an_out_dir_elsewhere_is_allowed(tmp_path, monkeypatch):
    from plankton_transfer.cli.common import refuse_pipeline_folder

    monkeypatch.chdir(tmp_path)
    for out in ("export", "database", "data_export", "../elsewhere"):
        refuse_pipeline_folder("--out-dir", Path(out), "images")
    with pytest.raises(UserError, match="lies inside data/"):
        refuse_pipeline_folder("--out-dir", Path("export/../data/x"), "images")


# T17: a regular expression that backtracks catastrophically


def ifcb_manifest(n: int = 6) -> pd.DataFrame:
    paths = [f"{c}/D20240101T00000{i}_IFCB101_0000{i}.jpg" for c in ("copepod", "diatom") for i in range(n // 2)]
    return pd.DataFrame({"path": paths, "class": [p.split("/")[0] for p in paths]})


def test_T17_the_reported_pattern_ends_with_one_line():
    """The review's ``((\\w+)*)\\.png`` on .jpg paths: minutes per path with Python's ``re``."""
    from plankton_transfer.data.grouping import group_ids
    from plankton_transfer.params.split import SplitParams

    pattern = r"((\w+)*)\.png"
    with pytest.raises(UserError, match="matches no image path") as err:
        group_ids(ifcb_manifest(), SplitParams(group=pattern), pd.DataFrame())
    assert one_line(err).startswith(f"split.group {pattern!r} matches no image path (e.g. 'copepod/D20240101T000000")


def test_T17_a_pattern_that_times_out_is_one_line_naming_it():
    """A pattern even the ``regex`` module cannot shortcut (exponential in the path's length)."""
    from plankton_transfer.data.grouping import search_each

    pattern = r"^((?:(?:ab|a)(?:b|)|ab)*)$"
    with pytest.raises(UserError, match=r"split.group .* took over 1 s on one path .*backtracks catastrophically") as e:
        search_each(pattern, pd.Series(["ab" * 40 + "c.jpg"]))
    one_line(e)
    assert search_each(pattern, pd.Series(["abab"]))[0].group(1) == "abab"


# T18: params without an upper bound


@pytest.mark.parametrize("key, value", [("crossval.folds", 10**9), ("crossval.repeats", 20000),
                                        ("stats.resamples", 10**9), ("stats.calibration_bins", 100_000_000),
                                        ("extract.batch_size", 10**9), ("train.max_epochs", 10**9),
                                        ("train.batch_size", 10**9), ("train.patience", 10**9),
                                        ("openset.resamples", 10**9), ("openset.repeats", 10**6)])
def test_T18_huge_values_are_refused_naming_the_key(tmp_path, key, value):
    name, field = key.split(".")
    params = write_params(tmp_path / "p.yaml", **{name: {field: value}})
    expected = rf"^{re.escape(str(params))}: {key} is {value}; it must be >= \d+ and <= \d+$"
    with pytest.raises(UserError, match=expected) as err:
        read_params(params)
    one_line(err)


def test_T18_train_lr_lists_are_bounded(tmp_path):
    params = write_params(tmp_path / "p.yaml", train={"lr": [0.001] * 33})
    with pytest.raises(UserError, match="train.lr lists 33 rates; give at most 32"):
        read_params(params)


# T12: the object_id check of an EcoTaxa table


def ecotaxa_records(ids: list[str], image: str = "p_images/x.jpg") -> list[tuple[int, dict]]:
    return [(n, {"object_id": oid, "img_file_name": image, "object_annotation_status": "predicted",
                 "object_annotation_category": "c"}) for n, oid in enumerate(ids, start=3)]


def test_T12_duplicate_objects_are_found_once_each_with_their_count():
    from pathlib import PurePosixPath

    from plankton_transfer.data.ecotaxa_tsv import line_problems

    heads = {"p_images/x.jpg": b"\xff\xd8\xff\xe0", "p_images/y.jpg": b"\xff\xd8\xff\xe0"}
    kinds = {"object_id": "[t]", "img_file_name": "[t]", "object_annotation_status": "[t]",
             "object_annotation_category": "[t]"}
    records = ecotaxa_records(["a", "b", "a", "c", "a", "b"])
    records.append((9, {**records[3][1], "img_file_name": "p_images/y.jpg"}))  # object c's second image: allowed
    problems = line_problems("ecotaxa_p.tsv", records, kinds, PurePosixPath("."), heads)
    assert sorted(problems) == ["ecotaxa_p.tsv: object 'a' with image 'p_images/x.jpg' listed 3 times",
                                "ecotaxa_p.tsv: object 'b' with image 'p_images/x.jpg' listed 2 times"]
    # an IFCB day's table: 40,000 rows took 29 s with the quadratic count; a linear check takes well under one
    ids = [f"D20240101T000000_IFCB101_{i:05d}" for i in range(40_000)]
    many = ecotaxa_records([*ids, ids[7]])
    problems = line_problems("ecotaxa_p.tsv", many, kinds, PurePosixPath("."), heads)
    assert problems == ["ecotaxa_p.tsv: object 'D20240101T000000_IFCB101_00007' with image 'p_images/x.jpg' listed "
                        "2 times"]


def test_T12_the_check_counts_ids_with_a_counter():
    """The implementation itself: one Counter over the ids, not ``ids.count(v)`` for each id."""
    import inspect

    from plankton_transfer.data import ecotaxa_tsv

    source = inspect.getsource(ecotaxa_tsv.line_problems)
    assert "collections.Counter(" in source and ".count(" not in source


# T25: a SHA256SUMS that is not UTF-8; pretrained.dir that is a file


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_T25_a_lock_file_that_is_not_utf8_is_one_line_in_fetch_and_extract(tmp_path, encoding, capsys):
    from plankton_transfer.cli import fetch_weights
    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.weights import resolve_weights
    from plankton_transfer.params.pretrained import PretrainedParams

    spec = get_backbone("vgg11").weights
    folder = tmp_path / "pretrained" / "vgg11"
    folder.mkdir(parents=True)
    (folder / spec.filename).write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "SHA256SUMS").write_bytes(f"{'0' * 64}  {spec.filename}\n# café\n".encode(encoding))
    with pytest.raises(UserError, match=r"SHA256SUMS is not UTF-8 text .*write it again") as err:
        resolve_weights("vgg11", spec, PretrainedParams(dir=str(tmp_path / "pretrained")))
    one_line(err)
    params = write_params(tmp_path / "p.yaml", pretrained={"dir": str(tmp_path / "pretrained")})
    with pytest.raises(UserError, match="weights not available for vgg11"):
        fetch_weights.main(["--models", "vgg11", "--params", str(params)])
    out = capsys.readouterr().out
    assert f"vgg11: {folder / 'SHA256SUMS'} is not UTF-8 text" in out and "Traceback" not in out


def test_T25_pretrained_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    from plankton_transfer.cli import fetch_weights
    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.weights import resolve_weights
    from plankton_transfer.params.pretrained import PretrainedParams

    (tmp_path / "README.md").write_text("# notes\n")
    params = write_params(tmp_path / "p.yaml", pretrained={"dir": str(tmp_path / "README.md")})
    with pytest.raises(UserError, match="weights not available for alexnet"):
        fetch_weights.main(["--models", "alexnet", "--params", str(params)])
    assert f"alexnet: pretrained.dir is '{tmp_path / 'README.md'}', a file, not a folder" in capsys.readouterr().out
    with pytest.raises(UserError, match="a file, not a folder") as err:
        resolve_weights("alexnet", get_backbone("alexnet").weights, PretrainedParams(dir=str(tmp_path / "README.md")))
    one_line(err)


# T26: a damaged file in the torch hub cache


@pytest.fixture
def toy_pinned(tmp_path, monkeypatch):
    """A registry entry with a pinned sha256 whose official URL is a local file, and a damaged
    copy of that file in the torch hub cache."""
    import hashlib

    import torch

    from plankton_transfer.cli import fetch_weights
    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.weights import WeightSpec, hub_checkpoint_dir

    (tmp_path / "server").mkdir()
    torch.save({"w": torch.arange(6.0)}, tmp_path / "server" / "tmp.pth")
    digest = hashlib.sha256((tmp_path / "server" / "tmp.pth").read_bytes()).hexdigest()
    served = tmp_path / "server" / f"toy-{digest[:8]}.pth"
    (tmp_path / "server" / "tmp.pth").rename(served)
    cached = hub_checkpoint_dir() / served.name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(np.random.default_rng(0).bytes(1 << 16))
    entries = {}
    monkeypatch.setattr(fetch_weights, "get_backbone", lambda name: entries.get(name) or get_backbone(name))

    def entry(url: str):
        entries["toy"] = dataclasses.replace(get_backbone("alexnet"), name="toy",
                                             weights=WeightSpec(filename=served.name, url=url, sha256=digest))
    params = write_params(tmp_path / "p.yaml", pretrained={"dir": str(tmp_path / "pretrained")})
    return served, cached, entry, params


def test_T26_a_damaged_hub_cache_file_is_named_and_the_official_file_downloaded(toy_pinned, capsys):
    from plankton_transfer.cli import fetch_weights
    from plankton_transfer.models.weights import sha256_of

    served, cached, entry, params = toy_pinned
    entry(served.as_uri())
    (outcome,) = fetch_weights.main(["--models", "toy", "--params", str(params)])
    assert outcome.ok and f"downloaded from {served.as_uri()}" in outcome.message
    assert f"the torch hub cache's {cached} is damaged or not the official file" in outcome.message
    assert sha256_of(params.parent / "pretrained" / "toy" / served.name) == sha256_of(served)
    assert cached.is_file()  # the user's cache is named, never deleted
    assert ".partial" not in capsys.readouterr().err


def test_T26_offline_the_damaged_cache_file_and_the_network_are_both_named(toy_pinned, capsys):
    from plankton_transfer.cli import fetch_weights

    served, cached, entry, params = toy_pinned
    entry("https://127.0.0.1:9/" + served.name)  # refused at once (loopback, nothing listens)
    with pytest.raises(UserError, match="weights not available for toy"):
        fetch_weights.main(["--models", "toy", "--params", str(params)])
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("toy: ")]
    assert line.startswith("toy: network unreachable (https://127.0.0.1:9/")
    assert f"the torch hub cache's {cached} is damaged" in line and ".partial" not in line
    assert not (params.parent / "pretrained" / "toy" / served.name).exists()


# T28: a quote in a model name never reaches a shell


def test_T28_a_model_name_with_a_quote_or_a_semicolon_runs_no_command(tmp_path):
    """``dvc repro -s extract@<name>`` skips the filter stage's name check; what stops the command
    is the stage's dep on the backbone's module, which DVC checks exists before running anything."""
    names = ["x';touch PWNED;'", "y;touch PWNED"]
    repo = make_repo(tmp_path / "repo", models=names, data={"raw": "data/raw"})
    for folder in ("data/raw/a", "data/split", *(f"data/pretrained/{n}" for n in names)):  # the stage's other deps
        (repo / folder).mkdir(parents=True, exist_ok=True)
    (repo / "data/raw/a/a.jpg").write_bytes(b"x")
    (repo / "data/split/train.csv").write_text("path,class\n")
    for name in names:
        done = run(repo, "dvc", "repro", "-s", f"extract@{name}", check=False)
        assert done.returncode != 0
        assert f"plankton_transfer/models/backbones/{name}.py" in done.stdout + done.stderr  # the missing dep
        assert "Running stage" not in done.stdout
    assert not list(repo.rglob("PWNED"))


# T30: messages that mislead


def test_T30_taxon_names_with_an_empty_ecotaxa_cell_are_refused_before_any_work(tmp_path, model):
    names = tmp_path / "names.csv"
    names.write_text("class,ecotaxa\nCopepoda,Calanoida\nDiatomea,\n")
    images = make_dataset(tmp_path / "new", {"a": 1})
    with pytest.raises(UserError, match=re.escape(f"--taxon-names {names} gives no EcoTaxa name for Diatomea")) as err:
        predict.main(["--model", str(model), "--input", str(images), "--out", str(tmp_path / "o"),
                      "--taxon-names", str(names), *CPU])
    one_line(err)
    assert not (tmp_path / "o").exists()


def test_T30_export_check_images_0_is_refused_as_not_positive(tmp_path, monkeypatch, capsys):
    from plankton_transfer.cli import export

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        export.main(["--check-images", "0"])
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and "argument --check-images: 0 is under 1" in err
    assert "no test images" not in err


def test_T30_predict_device_cuda_without_cuda_names_the_option(tmp_path, model, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    images = make_dataset(tmp_path / "new", {"a": 1})
    args = ["--model", str(model), "--input", str(images), "--out", str(tmp_path / "o"), "--workers", "0"]
    with pytest.raises(UserError, match=r"^--device is 'cuda' but no CUDA GPU is visible here; use --device auto "
                                        "or cpu$") as err:
        predict.main([*args, "--device", "cuda"])
    assert "param" not in one_line(err)
    monkeypatch.setenv("PLANKTON_DEVICE", "cuda:0")
    with pytest.raises(UserError, match=r"^PLANKTON_DEVICE is 'cuda:0' but no CUDA GPU"):
        predict.main(args)
    with pytest.raises(UserError, match=r"^--device is 'tpu'; use auto, cpu, cuda or cuda:N$"):
        predict.main([*args, "--device", "tpu"])
    assert not (tmp_path / "o").exists()


def test_T30_fetch_weights_unknown_backbone_does_not_claim_params_yaml(tmp_path, capsys):
    from plankton_transfer.cli import fetch_weights

    params = write_params(tmp_path / "p.yaml", pretrained={"dir": str(tmp_path / "pretrained")})
    with pytest.raises(UserError, match="weights not available for resnet50"):
        fetch_weights.main(["--models", "resnet50", "--params", str(params)])
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resnet50: ")]
    assert line.startswith("resnet50: unknown backbone(s) 'resnet50'; choose from alexnet")
    assert "params.yaml" not in line and "p.yaml" not in line


def test_T30_errors_name_the_params_file_given(tmp_path):
    from stages import filter as filter_stage

    other = write_params(tmp_path / "other.yaml", train={"lr": "fast"})
    with pytest.raises(UserError, match=rf"^{re.escape(str(other))}: train.lr is 'fast'"):
        read_params(other)
    make_ecotaxa_export(tmp_path / "export")
    other = write_params(tmp_path / "other.yaml", ecotaxa={"mapping": "/etc/names.csv"})
    with pytest.raises(UserError, match=rf"^{re.escape(str(other))}: ecotaxa.mapping is '/etc/names.csv'; put") as err:
        filter_stage.main(["--raw", str(tmp_path / "export"), "--manifest", str(tmp_path / "m.csv"), "--report",
                           str(tmp_path / "r.json"), "--cache-file", str(tmp_path / "c.csv"), "--params", str(other)])
    assert "params.yaml" not in one_line(err)
    other = write_params(tmp_path / "other.yaml", pretrained={"dir": ""})
    with pytest.raises(UserError, match=rf"^{re.escape(str(other))}: pretrained.dir is empty"):
        predict.pretrained_settings(other)


def test_T30_openset_holdout_error_names_the_params_file_given(tmp_path, monkeypatch):
    from plankton_transfer.evaluation import openset_run
    from stages import openset as openset_stage

    other = write_params(tmp_path / "other.yaml", openset={"holdout": 5})
    monkeypatch.setattr(openset_stage.ModelFile, "load", staticmethod(lambda path: tiny_model()))
    monkeypatch.setattr(openset_run, "all_features", lambda folder: (
        np.zeros((6, 4), np.float32), np.array([0, 1, 2, 0, 1, 2]), np.array(["train"] * 6)))
    with pytest.raises(UserError, match=rf"^{re.escape(str(other))}: openset.holdout is 5, but the training split"):
        openset_stage.main(["--model-file", str(tmp_path / "m.pt"), "--features", str(tmp_path / "f"),
                            "--out-dir", str(tmp_path / "o"), "--plot", str(tmp_path / "p.png"),
                            "--params", str(other)])


@pytest.mark.parametrize("limit", [50_000_000, 1_000_000])
def test_T30_a_header_only_bomb_names_the_configured_max_pixels(tmp_path, limit):
    for size in ((100_000, 100_000), (1500, 1000) if limit < 1_500_000 else (9000, 9000)):
        path = tmp_path / f"bomb_{size[0]}.png"
        path.write_bytes(png_header_only(*size))
        check = check_image(path, ImageParams(max_pixels=limit))
        assert not check.ok and check.kind == "too large"
        assert f"image.max_pixels ({limit})" in check.reason and "178956970" not in check.reason, check.reason
    assert check_image(tmp_path / "bomb_100000.png", ImageParams()).reason.count("50000000") == 1


# T24: failures under torchrun


ROOT_CAUSE_RANK1 = """\
[W1201 03:08:20.123456789 socket.cpp:752] [c10d] The client socket has failed to connect to [localhost]:29500.
W1201 03:08:24.000000 4242 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 4300 closing signal SIGTERM
E1201 03:08:24.500000 4242 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: -9) local_rank: 1 (pid: 4301) of binary: /usr/bin/python
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 892, in main
    run(args)
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 270, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
stages.extract FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_03:08:24
  host      : node7
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 4300)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 4300
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_03:08:24
  host      : node7
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4301)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4301
============================================================
"""

RENDEZVOUS = """\
[W1201 03:10:00.000000000 socket.cpp:204] [c10d] The hostname of the client socket cannot be retrieved. err=-3
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/rendezvous/c10d_rendezvous_backend.py", line 159, in _create_tcp_store
    store = TCPStore(
torch.distributed.DistNetworkError: The client socket has timed out after 60000ms while trying to connect to (localhost, 29400).

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 892, in main
    run(args)
  File "/venv/lib/python3.11/site-packages/torch/distributed/elastic/rendezvous/c10d_rendezvous_backend.py", line 183, in _create_tcp_store
    raise RendezvousConnectionError(
torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the C10d store has failed. See inner exception for details.
"""


def test_T24_the_rank_torchrun_saw_fail_first_is_named(tmp_path):
    from plankton_transfer.launch import failure_message

    stopped = {0: {"rank": 0, "host": "node7", "error": None}}  # rank 0 ended without a report of its own failure
    for reports in ({}, stopped):
        message = failure_message(ROOT_CAUSE_RANK1, tmp_path / "features", world=2, returncode=1, reports=reports)
        assert message == ("distributed extraction failed, nothing was written: rank 1 ended without a word (killed "
                           "by signal 9 (SIGKILL), e.g. by the out-of-memory killer or a time limit)")


def test_T24_a_ranks_own_message_comes_first_and_a_stopped_rank_is_not_the_cause(tmp_path):
    from plankton_transfer.distributed import STOPPED
    from plankton_transfer.launch import failure_message

    log = ROOT_CAUSE_RANK1.replace("-9 (pid: 4301)  (SIGKILL)", "2 (pid: 4301)").replace(
        "Signal 9 (SIGKILL) received by PID 4301", "To enable traceback see: https://pytorch.org/docs/stable/elastic/")
    reports = {0: {"rank": 0, "host": "node7", "error": STOPPED},
               1: {"rank": 1, "host": "node7", "error": "cannot read test image x.jpg (truncated)"}}
    assert failure_message(log, tmp_path / "f", 2, 1, reports).endswith(
        "nothing was written: rank 1 on node7: cannot read test image x.jpg (truncated)")
    # no summary at all (torchrun itself killed): the first rank that said why
    assert failure_message("", tmp_path / "f", 2, 1, reports).endswith("rank 1 on node7: cannot read test image "
                                                                       "x.jpg (truncated)")
    assert failure_message("", tmp_path / "f", 3, -9, {0: reports[0]}).endswith(
        "nothing was written: rank 1 ended without a word (killed by a signal, e.g. the out-of-memory killer or a "
        "time limit); torchrun's log above says how")


def test_T24_an_output_written_in_full_is_not_called_nothing(tmp_path):
    from plankton_transfer.launch import failure_message, output_snapshot

    out = tmp_path / "features"
    done = {0: {"rank": 0, "host": "node7", "error": None}}
    out.mkdir()
    (out / "train.npy").write_bytes(b"x")
    message = failure_message(ROOT_CAUSE_RANK1, out, 2, 1, done)
    assert "nothing" not in message and "has no meta.json" in message  # a folder this run did not finish
    (out / "meta.json").write_text("{}")
    message = failure_message(ROOT_CAUSE_RANK1, out, 2, 1, done)
    assert message.startswith(f"distributed extraction failed after writing {out} in full")
    assert message.endswith(": rank 1 ended without a word (killed by signal 9 (SIGKILL), e.g. by the out-of-memory "
                            "killer or a time limit)")
    before = output_snapshot(out)  # an earlier run's output, untouched by this one
    assert failure_message(ROOT_CAUSE_RANK1, out, 2, 1, {}, before).startswith(
        f"distributed extraction failed, nothing new was written ({out} is still the earlier one)")


def test_T24_a_rendezvous_failure_is_reported_as_such(tmp_path):
    from plankton_transfer.launch import failure_message

    message = failure_message(RENDEZVOUS, tmp_path / "features", 2, 1, {})
    assert message.startswith("distributed extraction failed, nothing was written: torchrun's processes never met "
                              "(RendezvousConnectionError: The connection to the C10d store has failed.")
    assert "loopback interface (127.0.0.1)" in message and "MASTER_ADDR:MASTER_PORT" in message
    assert "ended without a word" not in message and "\n" not in message


def test_T24_the_launcher_passes_torchrun_stderr_through_and_builds_the_message_from_it(tmp_path, monkeypatch, capfd):
    """run_workers with a stand-in for torchrun that prints the summary of a killed rank 1."""
    from plankton_transfer import launch

    script = tmp_path / "fake_torchrun.py"
    script.write_text("import sys\nsys.stderr.write(open(sys.argv[1]).read())\nsys.exit(1)\n")
    (tmp_path / "log.txt").write_text(ROOT_CAUSE_RANK1)
    monkeypatch.setattr(launch, "worker_command", lambda *a, **k: [sys.executable, str(script),
                                                                   str(tmp_path / "log.txt")])
    with pytest.raises(UserError) as err:
        launch.run_workers(launch.Launch("torchrun", 2), "stages.extract", [], tmp_path / "out" / "features")
    assert one_line(err) == ("distributed extraction failed, nothing was written: rank 1 ended without a word "
                             "(killed by signal 9 (SIGKILL), e.g. by the out-of-memory killer or a time limit)")
    assert "Root Cause (first observed failure):" in capfd.readouterr().err  # the user still sees torchrun's log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # the status folder is removed


def test_T24_a_real_torchrun_run_with_rank_1_killed_names_rank_1_from_torchrun_summary(tmp_path):
    """Two CPU processes under torchrun; rank 1 SIGKILLs itself at its first batch (tests/netguard/
    tests_faults.py): the message comes from torchrun's own "Root Cause" block (the signal)."""
    import subprocess

    from tests.conftest import ROOT, filter_and_split
    from tests.pipeline_repo import command_env

    raw = make_dataset(tmp_path / "raw", {"a": 6, "b": 7, "c": 6})
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 3}, extract={"batch_size": 8})
    filter_and_split(tmp_path, raw, params)
    env = {"PLANKTON_LAUNCHER": "torchrun", "PLANKTON_NPROC": "2", "PLANKTON_TEST_KILL_RANK": "1"}
    done = subprocess.run([sys.executable, "-m", "stages.extract", "--model", "alexnet", "--raw", str(raw),
                           "--split-dir", str(tmp_path / "split"), "--out-dir", str(tmp_path / "features"),
                           "--params", str(params)], cwd=ROOT, env=command_env(env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Root Cause (first observed failure):" in done.stderr  # torchrun's log still reaches the user
    assert done.stderr.strip().splitlines()[-1] == (
        "error: distributed extraction failed, nothing was written: rank 1 ended without a word (killed by signal 9 "
        "(SIGKILL), e.g. by the out-of-memory killer or a time limit)")
    assert not (tmp_path / "features").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".features")]  # no temporary left
