"""plankton-export's refusals: one line, and no folder made when it stops."""
from __future__ import annotations

from pathlib import Path

import pytest

from plankton_transfer.cli import export
from plankton_transfer.errors import UserError
from tests.field_data import tiny_model_file

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_an_out_dir_that_is_a_file_or_a_missing_split_is_one_line_and_makes_no_folder(tmp_path):
    tiny_model_file(tmp_path / "models" / "alexnet.pt")
    (tmp_path / "notes.txt").write_text("field notes")
    common = ["--models", "alexnet", "--models-dir", str(tmp_path / "models"), "--params", str(PARAMS),
              "--exporter", "torchscript"]
    with pytest.raises(UserError, match="is a file") as err:
        export.main([*common, "--out-dir", str(tmp_path / "notes.txt")])
    assert "\n" not in str(err.value) and (tmp_path / "notes.txt").read_text() == "field notes"
    with pytest.raises(UserError, match="split"):
        export.main([*common, "--out-dir", str(tmp_path / "shipped"), "--split-dir", str(tmp_path / "nosplit")])
    assert not (tmp_path / "shipped").exists()


def test_a_torchscript_check_that_fails_writes_no_onnx_file_either(tmp_path, monkeypatch):
    import numpy as np
    import yaml
    from PIL import Image

    from plankton_transfer.models import export as export_lib

    tiny_model_file(tmp_path / "models" / "alexnet.pt")
    raw, split = tmp_path / "raw", tmp_path / "split"
    (raw / "a").mkdir(parents=True)
    split.mkdir()
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(raw / "a" / "x.png")
    for name in ("train", "val", "test"):
        (split / f"{name}.csv").write_text("path,class,label\na/x.png,a,0\n")
    params = yaml.safe_load(PARAMS.read_text())
    params["data"]["raw"] = str(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(export_lib, "largest_difference", lambda run, images, reference: 1.0
                        if "traced" in run.__code__.co_freevars else 0.0)
    with pytest.raises(UserError, match="TorchScript"):
        export.main(["--models", "alexnet", "--models-dir", str(tmp_path / "models"), "--split-dir", str(split),
                     "--params", str(tmp_path / "params.yaml"), "--exporter", "torchscript",
                     "--out-dir", str(tmp_path / "shipped")])
    assert not list(tmp_path.glob("shipped/**/*.onnx"))
