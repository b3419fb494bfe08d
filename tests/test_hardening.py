"""Issue 9: each defect found by trying to break the pipeline, run on small synthetic data,
offline. Each test asserts the outcome a user sees: the files still on disk, the exit code,
one line of error without a traceback, and reports that name the files.

Numbering follows the issue (9.1 ... 9.13)."""
from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from plankton_transfer.data import features
from plankton_transfer.data.features import FeatureWriter
from plankton_transfer.data.filtering import filter_dataset
from plankton_transfer.data.images import check_image
from plankton_transfer.data.loading import ImageFiles
from plankton_transfer.data.scan import scan_dataset
from plankton_transfer.errors import UserError, run_cli
from plankton_transfer.files import PARTIAL_SUFFIX, atomic_path, is_zombie, write_csv, write_json, write_text
from plankton_transfer.models.model_file import ModelFile
from plankton_transfer.models.torch_files import load_tensor_file
from plankton_transfer.params.core import read_params
from plankton_transfer.params.filter import FilterParams
from plankton_transfer.params.image import ImageParams
from stages import compare as compare_stage
from stages import evaluate as evaluate_stage
from stages import extract as extract_stage
from stages import filter as filter_stage
from stages import finetune as finetune_stage
from stages import split as split_stage
from stages import train as train_stage
from tests.conftest import ROOT, make_dataset, organism, png_header_only, write_params
from tests.pipeline_repo import command_env, make_repo, run

IMG = ImageParams()


def cli(main, args: list[str], capsys) -> tuple[int, str]:
    """Run a stage's ``main`` as its console entry does; returns (exit code, stderr)."""
    capsys.readouterr()
    try:
        run_cli(lambda _: main(args))
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def the_error(stderr: str) -> str:
    """The one ``error:`` line a failed command prints; never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX))


def filter_args(raw: Path, out: Path, params: Path) -> list[str]:
    return ["--raw", str(raw), "--manifest", str(out / "manifest.csv"), "--report", str(out / "report.json"),
            "--cache-file", str(out / "cache.csv"), "--params", str(params)]


# 9.1: no command deletes what it did not create ---------------------------------------


def test_9_1_a_file_output_never_replaces_an_existing_folder(tmp_path, capsys):
    results = tmp_path / "RESULTS"
    (results / "sub").mkdir(parents=True)
    (results / "sub" / "cruise.csv").write_text("my only copy\n")
    with pytest.raises(UserError, match="is a folder; give a file path") as err:
        write_csv(results, pd.DataFrame({"a": [1]}))
    one_line(err)
    assert (results / "sub" / "cruise.csv").read_text() == "my only copy\n"
    assert partials(tmp_path) == []
    # through a stage: split's outputs are files, and train.csv is a user's folder here
    manifest = tmp_path / "manifest.csv"
    make_dataset(tmp_path / "raw", {"a": 3, "b": 3})
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 1})
    filter_stage.main(filter_args(tmp_path / "raw", tmp_path, params))
    (tmp_path / "split" / "train.csv").mkdir(parents=True)
    (tmp_path / "split" / "train.csv" / "keep.txt").write_text("mine\n")
    code, err = cli(split_stage.main, ["--manifest", str(manifest), "--out-dir", str(tmp_path / "split"),
                                       "--params", str(params)], capsys)
    assert code == 2 and "train.csv is a folder" in the_error(err)
    assert (tmp_path / "split" / "train.csv" / "keep.txt").read_text() == "mine\n"


def test_9_1_a_folder_output_refuses_an_existing_folder_and_leaves_it_alone(tmp_path):
    out = tmp_path / "features"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    with pytest.raises(UserError, match="already exists; a stage never deletes a folder") as err:
        with atomic_path(out, directory=True) as tmp:
            tmp.mkdir()
    one_line(err)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and partials(tmp_path) == []


def test_9_1_two_live_writers_of_one_output_never_touch_each_others_temporary(tmp_path):
    out = tmp_path / "out.txt"
    writer = ("import sys\nfrom plankton_transfer.files import atomic_path\n"
              f"with atomic_path({str(out)!r}) as tmp:\n"
              "    tmp.write_text('theirs')\n    print(tmp, flush=True)\n    sys.stdin.readline()\n")
    other = subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=command_env({"PYTHONPATH": str(ROOT)}))
    try:
        their_tmp = Path(other.stdout.readline().strip())
        assert their_tmp.read_text() == "theirs"
        write_text(out, "mine")  # meanwhile, this process writes the same output
        assert out.read_text() == "mine" and their_tmp.read_text() == "theirs"
    finally:
        other.communicate("go\n", timeout=60)
    assert other.returncode == 0 and out.read_text() == "theirs"  # the last rename wins, nothing is lost
    assert partials(tmp_path) == []


def test_9_1_only_this_hosts_temporaries_of_finished_processes_are_removed(tmp_path):
    out = tmp_path / "out.txt"
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    # killed, and not yet reaped by its parent (as a SIGKILLed run's processes stay where the
    # container's first process reaps nothing): a zombie, which kill(pid, 0) still finds
    zombie = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    deadline = time.monotonic() + 60
    while not is_zombie(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert is_zombie(zombie.pid) and not is_zombie(os.getpid())
    host = socket.gethostname()
    stale = tmp_path / f".out.txt.{host}.{done.pid}.abc{PARTIAL_SUFFIX}"
    killed = tmp_path / f".out.txt.{host}.{zombie.pid}.zzz{PARTIAL_SUFFIX}"
    live = tmp_path / f".out.txt.{host}.{os.getpid()}.def{PARTIAL_SUFFIX}"
    remote = tmp_path / f".out.txt.other-host.{done.pid}.ghi{PARTIAL_SUFFIX}"
    for folder in (stale, killed, live, remote):
        folder.mkdir()
        (folder / "out.txt").write_text("partial")
    try:
        write_text(out, "new")
    finally:
        zombie.wait()
    assert not stale.exists() and not killed.exists() and live.is_dir() and remote.is_dir()
    assert out.read_text() == "new"


# 9.2: the full sha256 is checked wherever a weight file comes from --------------------


def test_9_2_a_forged_prefix_is_refused_by_the_fetch_command_from_the_hub_cache_and_the_download(
        tmp_path, monkeypatch, capsys):
    import dataclasses

    from plankton_transfer.cli import fetch_weights
    from plankton_transfer.models.backbones import get_backbone
    from plankton_transfer.models.weights import WeightSpec, hub_checkpoint_dir

    forged = tmp_path / "server" / "toy.pth"
    forged.parent.mkdir()
    torch.save({"w": torch.zeros(3)}, forged)
    digest = hashlib.sha256(forged.read_bytes()).hexdigest()
    name = f"toy-{digest[:8]}.pth"  # the forger matched the 8 hex digits of the official name
    spec = WeightSpec(filename=name, url=forged.as_uri(), sha256=digest[:8] + "0" * 56)
    toy = dataclasses.replace(get_backbone("alexnet"), name="toy", weights=spec)
    monkeypatch.setattr(fetch_weights, "get_backbone", lambda name: toy if name == "toy" else get_backbone(name))
    params = write_params(tmp_path / "params.yaml", pretrained={"dir": str(tmp_path / "pretrained")})
    with pytest.raises(UserError, match="weights not available for toy"):
        fetch_weights.main(["--models", "toy", "--params", str(params)])  # downloaded
    assert "not the official file's; nothing was kept" in capsys.readouterr().out
    hub_checkpoint_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(forged, hub_checkpoint_dir() / name)
    with pytest.raises(UserError, match="weights not available for toy"):
        fetch_weights.main(["--models", "toy", "--params", str(params)])  # from the hub cache
    assert "damaged or not the official" in capsys.readouterr().out
    folder = tmp_path / "pretrained" / "toy"
    assert [p.name for p in folder.iterdir()] == []


# 9.3: any data.raw works, and a model name cannot inject a command ---------------------


def test_9_3_odd_data_raw_works_through_dvc_and_a_model_name_cannot_run_a_command(tmp_path):
    raw = "data/it's a \"raw\" (2023) $HOME"
    make_dataset(tmp_path / raw, {"a": 4, "b": 4})
    repo = make_repo(tmp_path, data={"raw": raw}, filter={"min_images_per_class": 2})
    done = run(repo, "dvc", "repro", "split")
    assert json.loads((repo / "data" / "filtered" / "report.json").read_text())["summary"]["kept"] == 8
    assert sum(len(pd.read_csv(repo / "data" / "split" / f"{s}.csv")) for s in ("train", "val", "test")) == 8
    assert "unrecognized arguments" not in done.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"] = ["alexnet", "x';touch PWNED;'", "x;touch PWNED;"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    failed = run(repo, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "a backbone name has only letters, digits and _.-" in the_error(failed.stderr)
    assert not list(repo.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_9_3_an_unregistered_backbone_stops_the_first_stage_before_any_work(tmp_path):
    raw = make_dataset(tmp_path / "raw", {"a": 3, "b": 3})
    params = write_params(tmp_path / "params.yaml", models=["alexnet", "resnet9000"], data={"raw": str(raw)},
                          filter={"min_images_per_class": 2})
    with pytest.raises(UserError, match="unknown backbone.*'resnet9000'.*choose from alexnet"):
        filter_stage.main(["--manifest", str(tmp_path / "m.csv"), "--report", str(tmp_path / "r.json"),
                           "--cache-file", str(tmp_path / "c.csv"),
                           "--params", str(params)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "raw"]


# 9.4: non-UTF-8 file and folder names -----------------------------------------------


def test_9_4_non_utf8_names_are_rejected_with_a_readable_reason_and_nothing_is_lost(tmp_path, capsys):
    raw = tmp_path / "raw"
    make_dataset(raw, {"Copepoda": 4, "Diatom": 4})
    encoded = os.fsencode(raw)
    organism(np.random.default_rng(5), 0).save(os.fsdecode(encoded + b"/Copepoda/pl\xe4nkton.jpg"))
    os.mkdir(encoded + b"/caf\xe9")
    for i in range(3):
        organism(np.random.default_rng(10 + i), 1).save(os.fsdecode(encoded + b"/caf\xe9/c%d.jpg" % i))
    Path(os.fsdecode(encoded + b"/Diatom/n\xe4tes.csv")).write_text("id\n")
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 2})
    out = tmp_path / "out"
    for _ in range(2):  # the second run reads the validation cache the first wrote
        code, err = cli(filter_stage.main, filter_args(raw, out, params), capsys)
        assert code == 0 and "Traceback" not in err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rejected = {r["path"]: r["reason"] for r in report["rejected"]["files"]}
    assert set(rejected) == {"Copepoda/pl\\xe4nkton.jpg", "caf\\xe9/c0.jpg", "caf\\xe9/c1.jpg", "caf\\xe9/c2.jpg"}
    assert all(reason.startswith("name not UTF-8: rename") for reason in rejected.values())
    assert report["classes"]["dropped"]["caf\\xe9"]["reason"] == "no usable images after validation"
    assert {e["path"] for e in report["ignored"]["entries"]} == {"Diatom/n\\xe4tes.csv"}
    assert report["files_seen"] == sum(report["summary"].values()) == 13
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert manifest["class"].value_counts().to_dict() == {"Copepoda": 4, "Diatom": 4}
    assert len(pd.read_csv(out / "cache.csv")) == 8


def test_9_4_a_validation_cache_that_cannot_be_written_costs_no_finished_work(tmp_path, capsys):
    raw = make_dataset(tmp_path / "raw", {"a": 3, "b": 3})
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 1})
    out = tmp_path / "out"
    (out / "cache.csv").mkdir(parents=True)  # in the way of the cache file
    code, err = cli(filter_stage.main, filter_args(raw, out, params), capsys)
    assert code == 0 and "warning: validation cache" in err and "the next run checks every file again" in err
    assert len(pd.read_csv(out / "manifest.csv")) == 6 and (out / "cache.csv").is_dir()


# 9.5: folder links leaving data.raw -------------------------------------------------


def test_9_5_a_folder_link_leaving_data_raw_stops_the_filter_with_the_fix(tmp_path, capsys):
    raw = make_dataset(tmp_path / "raw", {"a": 3, "b": 3})
    make_dataset(tmp_path / "other", {"c": 3})
    os.symlink(tmp_path / "other" / "c", raw / "c")
    os.symlink(tmp_path / "other", raw / "a" / "more")  # deeper inside a class too
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 1})
    code, err = cli(filter_stage.main, filter_args(raw, tmp_path / "out", params), capsys)
    message = the_error(err)
    assert code == 2 and "a/more, c;" in message and "copy the data in, or point data.raw at the real folder" in message
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "other" / "c").iterdir()) == [f"c_{i:03d}.jpg" for i in range(3)]


def test_9_5_a_linked_data_raw_and_links_to_files_are_fine(tmp_path):
    real = make_dataset(tmp_path / "real", {"a": 3, "b": 3})
    os.symlink(real, tmp_path / "raw")  # DVC follows the top-level link
    os.symlink(real / "a" / "a_000.jpg", real / "b" / "linked.jpg")  # DVC hashes the file a link points to
    scan = scan_dataset(tmp_path / "raw")
    assert len(scan.candidates) == 7 and not scan.outside_links


# 9.6: one class left ----------------------------------------------------------------


def test_9_6_one_class_left_stops_the_filter_naming_the_class_and_threshold(tmp_path, capsys):
    raw = make_dataset(tmp_path / "raw", {"copepod": 5, "diatom": 2})
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 3})
    out = tmp_path / "out"
    code, err = cli(filter_stage.main, filter_args(raw, out, params), capsys)
    message = the_error(err)
    assert code == 2
    assert "only one class kept" in message and "'copepod' (5 images" in message
    assert "filter.min_images_per_class=3" in message and "'diatom', has 2 usable images" in message
    assert sorted(p.name for p in out.iterdir()) == ["cache.csv", "report.json"]  # no manifest for split


def test_9_6_the_stage_exits_2_with_one_line_from_the_command_line(tmp_path):
    raw = make_dataset(tmp_path / "raw", {"copepod": 3})
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 1})
    proc = subprocess.run([sys.executable, "-m", "stages.filter", *filter_args(raw, tmp_path / "out", params)],
                          cwd=ROOT, capture_output=True, text=True, env=command_env())
    assert proc.returncode == 2
    assert "only one class kept" in the_error(proc.stderr) and "a classifier needs two or more" in proc.stderr


# 9.7: model and weight files that are not what they should be ------------------------


@pytest.fixture
def bad_model_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "plankton-transfer/model", "head": {"weight": torch.zeros(2, 3)}, "classes": ["a", "b"]}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("this is not a model\n")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(collections.OrderedDict(w=RunsCode()), protocol=2))
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, other)
    return {"missing": (tmp_path / "no_such.pt", "not found; check the path"),
            "folder": (folder, "is a folder, not a weight or model file"),
            "text": (text, "is not a"), "truncated": (truncated, "is not a readable PyTorch file"),
            "code": (evil, "could run code"), "other": (other, "is not a plankton-transfer/model file")}


class RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['MARKER'], 'w').write('pwned')",))


@pytest.mark.parametrize("case", ["missing", "folder", "text", "truncated", "code", "other"])
def test_9_7_a_bad_model_file_is_one_line(bad_model_files, case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    path, expected = bad_model_files[case]
    with pytest.raises(UserError) as err:
        ModelFile.load(path)
    message = one_line(err)
    assert str(path) in message and expected in message and "weights_only" not in message
    if case != "other":
        with pytest.raises(UserError, match=expected):
            load_tensor_file(path)
    outputs = [arg for name in ("out-dir", "plots-dir", "confusion", "reliability", "review-curve")
               for arg in (f"--{name}", str(tmp_path / "out" / name))]
    code, stderr = cli(evaluate_stage.main, ["--model-file", str(path), "--features", str(tmp_path / "f"), *outputs],
                       capsys)
    assert code == 2 and expected in the_error(stderr) and "weights_only" not in stderr
    assert not (tmp_path / "marker").exists()


# 9.8: params checked by type and range, before any work ------------------------------

BAD_PARAMS = [
    ("train", "lr", "abc", "a finite number or a list of finite numbers"),
    ("train", "lr", float("nan"), "a finite number"),
    ("train", "lr", float("inf"), "a finite number"),
    ("train", "max_epochs", 1.5, "a whole number"),
    ("train", "momentum", -0.5, ">= 0 and <= 1"),
    ("filter", "min_images_per_class", "abc", "a whole number"),
    ("base", "seed", "abc", "a whole number"),
    ("pretrained", "dir", 123, "a text value"),
    ("split", "train", float("nan"), "a finite number"),
    ("filter", "include", "copepod", "a list of text values (e.g. [copepod])"),
]


def stage_calls(tmp_path: Path, params: Path) -> dict:
    """Each stage that reads params, with inputs that do not exist: a params error must come first."""
    missing = str(tmp_path / "missing")
    out = str(tmp_path / "out")
    return {
        "filter": (filter_stage.main, filter_args(tmp_path / "missing", tmp_path / "out", params)),
        "split": (split_stage.main, ["--manifest", missing, "--out-dir", out, "--params", str(params)]),
        "extract": (extract_stage.main, ["--model", "alexnet", "--raw", missing, "--split-dir", missing,
                                         "--out-dir", out, "--params", str(params)]),
        "train": (train_stage.main, ["--features", missing, "--model-file", out, "--live-dir", out,
                                     "--params", str(params)]),
        "compare": (compare_stage.main, ["--evaluations", missing, "--crossvals", missing, "--out-dir", out,
                                         "--plots-dir", out, "--headline", out, "--params", str(params)]),
        "finetune": (finetune_stage.main, ["--model", "efficientnet_lite0", "--raw", missing, "--split-dir", missing,
                                           "--model-file", out, "--features", out, "--checkpoints", out,
                                           "--live-dir", out, "--params", str(params)]),
    }


@pytest.mark.parametrize("name,key,value,allowed", BAD_PARAMS, ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD_PARAMS])
def test_9_8_a_bad_param_stops_every_stage_before_any_work_naming_key_value_and_what_is_allowed(
        tmp_path, capsys, name, key, value, allowed):
    params = write_params(tmp_path / "params.yaml", **{name: {key: value}})
    for stage, (main, args) in stage_calls(tmp_path, params).items():
        code, err = cli(main, args, capsys)
        message = the_error(err)
        assert code == 2, stage
        assert f"{name}.{key} is {value!r}" in message and allowed in message, (stage, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_9_8_unknown_sections_and_duplicate_models_are_errors(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    text = params.read_text()
    params.write_text(text + "trian:\n  lr: 0.01\n")
    with pytest.raises(UserError, match="unknown section.*trian; known sections are augment, base,") as err:
        read_params(params)
    one_line(err)
    write_params(params, models=["alexnet", "vgg11", "alexnet"])
    with pytest.raises(UserError, match="models lists alexnet more than once"):
        read_params(params)


def test_9_8_split_fractions_and_other_ranges(tmp_path):
    for section, values, expected in [("split", {"train": 0.0}, "split fractions must be > 0 and sum to 1"),
                                      ("train", {"lr": [0.1, -1.0]}, "train.lr is -1.0; it must be > 0"),
                                      ("filter", {"min_images_per_class": 0}, ">= 1"),
                                      ("image", {"background": [0, 0, 256]}, "use three integers 0-255")]:
        params = write_params(tmp_path / "params.yaml", **{section: values})
        with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(".", r"\.")):
            read_params(params)


# 9.9 and 9.12: the extract stage --------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepared")
    raw = make_dataset(tmp / "raw", {"a": 5, "b": 5})
    params = write_params(tmp / "params.yaml", filter={"min_images_per_class": 3},
                          extract={"batch_size": 4})
    filter_stage.main(filter_args(raw, tmp, params))
    split_stage.main(["--manifest", str(tmp / "manifest.csv"), "--out-dir", str(tmp / "split"),
                      "--params", str(params)])
    return tmp, raw, params


def extract_args(prepared, out: Path) -> list[str]:
    tmp, raw, params = prepared
    return ["--model", "alexnet", "--raw", str(raw), "--split-dir", str(tmp / "split"), "--out-dir", str(out),
            "--params", str(params)]


def test_9_9_a_test_image_replaced_by_a_train_image_after_the_filter_is_caught(prepared, tmp_path, capsys):
    tmp, raw, _ = prepared
    train = pd.read_csv(tmp / "split" / "train.csv")["path"].iloc[0]
    test = pd.read_csv(tmp / "split" / "test.csv")["path"].iloc[0]
    original = (raw / test).read_bytes()
    (raw / test).write_bytes((raw / train).read_bytes())  # a valid image: only the hash tells
    try:
        code, err = cli(extract_stage.main, extract_args(prepared, tmp_path / "feat"), capsys)
    finally:
        (raw / test).write_bytes(original)
    message = the_error(err)
    assert code == 2 and test in message and "content differs from the manifest" in message
    assert "changed since the filter stage: run dvc repro again" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_9_9_the_device_decoding_path_checks_the_bytes_too(prepared):
    tmp, raw, _ = prepared
    rows = pd.read_csv(tmp / "split" / "train.csv")
    paths, digests = rows["path"].tolist()[:2], rows["sha256"].tolist()[:2]
    files = ImageFiles(raw, paths, lambda img: torch.zeros(1), IMG, 0, raw=[True, False], sha256=digests[::-1])
    for i in range(2):
        x, error, _ = files[i]
        assert x.numel() == 0 and error.startswith(f"{paths[i]}: content differs from the manifest")
    fine = ImageFiles(raw, paths, lambda img: torch.zeros(1), IMG, 0, raw=[True, False], sha256=digests)
    assert [fine[i][1] for i in range(2)] == ["", ""]


def test_9_12_too_little_free_space_stops_the_extract_stage_before_writing(prepared, tmp_path, capsys, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(features.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    code, err = cli(extract_stage.main, extract_args(prepared, tmp_path / "feat"), capsys)
    message = the_error(err)
    assert code == 2 and "not enough free disk space for the features" in message
    assert "0.0 MB is free" in message and "MB, " in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_9_12_the_feature_files_get_their_blocks_up_front_and_enospc_is_one_line(tmp_path, monkeypatch):
    reserved = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, size: reserved.append(size), raising=False)
    FeatureWriter(tmp_path, {"train": 3, "val": 2, "test": 0}, dim=4).close()
    assert reserved == [(tmp_path / "train.npy").stat().st_size, (tmp_path / "val.npy").stat().st_size]

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="not enough free disk space for .*train.npy") as err:
        FeatureWriter(tmp_path / "x", {"train": 3}, dim=4)
    one_line(err)


def test_9_12_a_disk_full_while_writing_any_output_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "out.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="cannot write .*out.json: no space left on the disk; free some space") as err:
        write_json(tmp_path / "out.json", {"a": 1})
    one_line(err)
    assert list(tmp_path.iterdir()) == []


# 9.10: huge files named like images -------------------------------------------------


def peak_memory(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_9_10_a_huge_non_image_is_rejected_from_its_header_without_reading_it(tmp_path):
    size = 256 * 2**20
    big = tmp_path / "huge.jpg"
    with big.open("wb") as f:
        f.truncate(size)  # sparse: no disk space used
    check = None

    def run_check():
        nonlocal check
        check = check_image(big, IMG)

    assert peak_memory(run_check) < 16 * 2**20
    assert not check.ok and check.kind == "not an image"


def test_9_10_an_image_followed_by_junk_is_hashed_as_a_stream(tmp_path):
    path = tmp_path / "tail.jpg"
    organism(np.random.default_rng(0), 0).save(path, quality=90)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size + 64 * 2**20)
    check = None

    def run_check():
        nonlocal check
        check = check_image(path, IMG)

    assert peak_memory(run_check) < 16 * 2**20
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    assert check.ok and check.sha256 == digest.hexdigest()


# 9.11: file link loops ---------------------------------------------------------------


def test_9_11_a_file_link_loop_is_a_broken_link(tmp_path):
    raw = make_dataset(tmp_path / "raw", {"a": 3, "b": 3})
    os.symlink("b_loop.jpg", raw / "a" / "a_loop.jpg")
    os.symlink("a_loop.jpg", raw / "a" / "b_loop.jpg")
    os.symlink("nowhere.jpg", raw / "b" / "dangling.jpg")
    result = filter_dataset(raw, FilterParams(min_images_per_class=1), IMG)
    reasons = {e["path"]: e["reason"] for e in result.report.ignored["entries"]}
    assert reasons == {"a/a_loop.jpg": "broken link or special file", "a/b_loop.jpg": "broken link or special file",
                       "b/dangling.jpg": "broken link or special file"}
    assert len(result.manifest) == 6 and result.report.files_seen == 9


# 9.13: smaller ones --------------------------------------------------------------------


def test_9_13_empty_folders_and_all_conflicts_do_not_suggest_lowering_the_threshold(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 2})
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    code, err = cli(filter_stage.main, filter_args(empty, tmp_path / "o1", params), capsys)
    message = the_error(err)
    assert code == 2 and "no class kept" in message and "min_images_per_class (" not in message
    assert "add a sub-folder of images for each class" in message
    conflicts = make_dataset(tmp_path / "conflicts", {"a": 3})
    shutil.copytree(conflicts / "a", conflicts / "b")
    code, err = cli(filter_stage.main, filter_args(conflicts, tmp_path / "o2", params), capsys)
    message = the_error(err)
    assert code == 2 and "file each of the 6 images in label conflicts in one class only" in message
    assert "lower filter.min_images_per_class" not in message


def test_9_13_image_max_pixels_above_pillows_own_limit_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    path = tmp_path / "scan.png"
    path.write_bytes(png_header_only(15_000, 12_000))  # 180 Mpx: over 2 x Pillow's default limit
    assert check_image(path, IMG).kind == "too large"
    accepted = check_image(path, ImageParams(max_pixels=200_000_000))
    assert accepted.kind == "truncated or corrupt"  # got past the size check to decoding (no pixel data here)


def test_sigterm_during_the_clean_up_of_a_failed_write_waits_until_the_temporary_is_gone(tmp_path, monkeypatch):
    """torchrun sends SIGTERM to the other ranks when one dies, often while rank 0 is already
    removing its temporary output folder: the removal finishes, then the signal stops the run."""
    import signal

    from plankton_transfer import files

    real_rmtree = shutil.rmtree

    def rmtree_interrupted(path, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the removal
        real_rmtree(path, **kwargs)

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(files.shutil, "rmtree", rmtree_interrupted)
    try:
        with pytest.raises(SystemExit):
            with atomic_path(tmp_path / "features", directory=True) as tmp:
                tmp.mkdir()
                for i in range(50):
                    (tmp / f"{i}.npy").write_bytes(b"0" * 100)
                raise UserError("lost contact with another rank")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []  # no half-removed .features.*.partial left behind
