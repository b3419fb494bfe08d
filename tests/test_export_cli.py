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
