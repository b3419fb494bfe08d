"""plankton-export: a consumer with only onnxruntime, numpy and Pillow, following only the JSON,
gets plankton-predict's probabilities (issue 17); the export folder is one set; where it may be
written; one-line refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from plankton_transfer.cli import export
from plankton_transfer.data.sources import Item
from plankton_transfer.errors import UserError
from plankton_transfer.models.inference import classify_features, load_predictor
from plankton_transfer.params.pretrained import PretrainedParams
from tests.conftest import ROOT, organism
from tests.field_data import lite0_model, tiny_model_file

CONSUMER = Path(__file__).with_name("onnx_consumer.py")


def image_kinds(folder: Path) -> list[Path]:
    """EXIF-rotated, large, greyscale, palette (with transparency), alpha and 16-bit images."""
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    organism(rng, 0, size=(90, 60)).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=90)
    organism(rng, 1, size=(2400, 1800)).save(folder / "large.jpg", quality=85)  # decoded at 1/8 (draft)
    organism(rng, 2, size=(120, 40)).convert("L").save(folder / "grey.png")
    organism(rng, 3).convert("P").save(folder / "palette.png", transparency=0)
    rgba = np.asarray(organism(rng, 4).convert("RGBA")).copy()
    rgba[:12, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    deep = (np.linspace(0, 4095, 48 * 40).reshape(40, 48)).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    organism(rng, 5, size=(37, 91)).save(folder / "tall.jpg", quality=92)
    return sorted(folder.iterdir())


def project(tmp_path: Path, images: list[Path]) -> Path:
    """A params file whose data.raw and test split hold ``images`` (the export's check images)."""
    split = tmp_path / "split"
    split.mkdir()
    rows = pd.DataFrame({"path": [p.name for p in images], "class": "a", "label": 0, "sha256": ""})
    for name in ("train", "val", "test"):
        rows.to_csv(split / f"{name}.csv", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["raw"] = str(images[0].parent)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_a_consumer_without_torch_following_the_json_gets_predicts_probabilities(tmp_path, mode):
    images = image_kinds(tmp_path / "raw")
    model = lite0_model(mode=mode)
    (tmp_path / "models").mkdir()
    model.save(tmp_path / "models" / "efficientnet_lite0.pt")
    params = project(tmp_path, images)
    export.main(["--models", "efficientnet_lite0", "--models-dir", str(tmp_path / "models"), "--split-dir",
                 str(tmp_path / "split"), "--params", str(params), "--exporter", "torchscript",
                 "--evaluations", str(tmp_path / "evaluations"), "--out-dir", str(tmp_path / "shipped")])
    description = tmp_path / "shipped" / "efficientnet_lite0" / "efficientnet_lite0.json"
    steps = json.loads(description.read_text())["preprocessing"]
    assert {"jpeg_draft", "exif_orientation", "to_rgb", "background", "resize"} <= set(steps)
    bootstrap = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", bootstrap, str(CONSUMER), str(description), *map(str, images),
                           "--out", str(tmp_path / "p.npy")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    consumer = np.load(tmp_path / "p.npy")
    predictor = load_predictor(model, PretrainedParams(), "cpu")  # plankton-predict's path
    items = [Item(id=p.name, file=p.name, path=str(p)) for p in images]
    features, errors, _ = classify_features(predictor, items, batch_size=4, workers=0)
    assert errors == {}
    pipeline = model.probabilities(np.stack([features[i] for i in range(len(items))]))
    assert np.abs(consumer - pipeline).max() < 1e-4, np.abs(consumer - pipeline).max(axis=1)


def test_an_export_replaces_its_folder_as_one_set_and_stays_out_of_the_pipelines_folders(tmp_path, monkeypatch):
    """T3: a failure half-way leaves the earlier export whole; T14: never inside data/ or data.raw."""
    from plankton_transfer.models import export as export_lib

    images = image_kinds(tmp_path / "raw")[:2]
    (tmp_path / "models").mkdir()
    lite0_model().save(tmp_path / "models" / "efficientnet_lite0.pt")
    params = project(tmp_path, images)
    args = ["--models", "efficientnet_lite0", "--models-dir", str(tmp_path / "models"), "--split-dir",
            str(tmp_path / "split"), "--params", str(params), "--exporter", "torchscript",
            "--evaluations", str(tmp_path / "evaluations")]
    export.main([*args, "--out-dir", str(tmp_path / "shipped")])
    folder = tmp_path / "shipped" / "efficientnet_lite0"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    lite0_model(classes=("x", "y", "z")).save(tmp_path / "models" / "efficientnet_lite0.pt")  # classes changed

    def killed(*_):
        raise UserError("killed while writing")

    monkeypatch.setattr(export, "save_traced", killed)  # after the new .onnx was written
    with pytest.raises(UserError, match="killed"):
        export.main([*args, "--out-dir", str(tmp_path / "shipped")])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no new .onnx beside the old .json
    monkeypatch.chdir(tmp_path)
    for out in ("data/export", str(images[0].parent / "export"), "models"):
        with pytest.raises(UserError, match="lies inside") as err:
            export.main([*args, "--out-dir", out])
        assert "\n" not in str(err.value)


def test_an_out_dir_that_is_a_file_a_bad_count_or_a_missing_split_is_one_line_and_makes_no_folder(tmp_path, capsys):
    tiny_model_file(tmp_path / "models" / "alexnet.pt")
    (tmp_path / "notes.txt").write_text("field notes")
    common = ["--models", "alexnet", "--models-dir", str(tmp_path / "models"), "--params", str(ROOT / "params.yaml"),
              "--exporter", "torchscript"]
    with pytest.raises(UserError, match="is a file") as err:
        export.main([*common, "--out-dir", str(tmp_path / "notes.txt")])
    assert "\n" not in str(err.value) and (tmp_path / "notes.txt").read_text() == "field notes"
    with pytest.raises(UserError, match="split"):
        export.main([*common, "--out-dir", str(tmp_path / "shipped"), "--split-dir", str(tmp_path / "nosplit")])
    assert not (tmp_path / "shipped").exists()
    with pytest.raises(SystemExit):  # T30: was 'no test images in ...test.csv' although it had some
        export.main([*common, "--check-images", "0"])
    assert "argument --check-images" in capsys.readouterr().err
