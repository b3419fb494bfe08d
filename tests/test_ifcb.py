"""IFCB raw data: bins of both instrument generations, read exactly as pyifcb reads them."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from plankton_transfer.cli import predict
from plankton_transfer.data.ecotaxa_tsv import check_upload
from plankton_transfer.data.images import BadImage
from plankton_transfer.data.sources import list_inputs, load_item, roi_pixels
from plankton_transfer.params.image import ImageParams
from tests.field_data import roi_pixels as random_pixels
from tests.field_data import tiny_model_file, write_bin

V1, V2, V2_REORDERED = "IFCB5_2012_028_081515", "D20130526T095207_IFCB013", "D20240102T030405_IFCB127"
# a newer instrument whose header names the columns in another order than 15/16/17
REORDERED = "trigger#, ADC_time, RoiWidth, RoiHeight, StartByte, RoiX, RoiY, PMTA, PMTB"


def make_bins(root, rng) -> dict[str, np.ndarray]:
    """Three bins (rows without an image among them), a truncated one and an incomplete one."""
    expected = write_bin(root / "2012" / V1, V1, [random_pixels(rng, 45, 96), random_pixels(rng, 30, 7), None,
                                                  random_pixels(rng, 12, 40)], schema=1, leading=1)
    expected |= write_bin(root / "2013", V2, [None, None, random_pixels(rng, 34, 88), None,
                                              random_pixels(rng, 66, 104)], schema=2)
    expected |= write_bin(root / "2024", V2_REORDERED, [random_pixels(rng, 20, 31), None], schema=2,
                          v2_format=REORDERED)
    write_bin(root / "broken", "D20240102T000000_IFCB127", [random_pixels(rng, 10, 10)], schema=2)
    roi = root / "broken" / "D20240102T000000_IFCB127.roi"
    roi.write_bytes(roi.read_bytes()[:50])  # truncated mid-ROI
    write_bin(root / "broken", "D20240103T000000_IFCB127", [random_pixels(rng, 10, 10)], schema=2)
    (root / "broken" / "D20240103T000000_IFCB127.roi").unlink()
    (root / "notes.txt").write_text("cruise log\n")
    return expected


def test_both_generations_decode_exactly_the_pixels_written(tmp_path):
    expected = make_bins(tmp_path, np.random.default_rng(0))
    inputs = list_inputs(tmp_path)
    assert inputs.kind == "ifcb"
    items = {item.id: item for item in inputs.items}
    assert set(expected) <= set(items)
    assert {f"{V1}_00001", f"{V1}_00002", f"{V1}_00004", f"{V2}_00003", f"{V2}_00005", f"{V2_REORDERED}_00001"} == \
        set(expected)  # ROI numbers are .adc rows; rows without an image are skipped
    for roi_id, pixels in expected.items():
        assert items[roi_id].sample == roi_id.rsplit("_", 1)[0]
        np.testing.assert_array_equal(roi_pixels(items[roi_id]), pixels)
        rgb = np.asarray(load_item(items[roi_id], ImageParams()))  # what the classifier is given
        assert rgb.shape == (*pixels.shape, 3) and all((rgb[..., c] == pixels).all() for c in range(3))
    assert inputs.ignored["IFCB rows without an image (width or height 0)"] == 5
    assert "no .roi" in items["D20240103T000000_IFCB127"].error
    with pytest.raises(BadImage, match="truncated .roi"):
        roi_pixels(items["D20240102T000000_IFCB127_00001"])


def test_prediction_on_bins_writes_the_rois_as_png_and_a_valid_ecotaxa_table(tmp_path):
    expected = make_bins(tmp_path / "ifcb", np.random.default_rng(1))
    model = tiny_model_file(tmp_path / "tiny.pt")
    out = tmp_path / "results" / "cruise"
    table = predict.main(["--model", str(model), "--input", str(tmp_path / "ifcb"), "--out", str(out),
                          "--workers", "0", "--device", "cpu"])
    classified = table[table["error"] == ""]
    assert set(classified["id"]) == set(expected)
    assert set(table[table["error"] != ""]["id"]) == {"D20240102T000000_IFCB127_00001", "D20240103T000000_IFCB127"}
    upload = out / "ecotaxa_cruise.zip"
    assert check_upload(upload) == []  # pyecotaxa's Archive.validate() and EcoTaxa's importer rules
    with zipfile.ZipFile(upload) as z:
        rows = pd.read_csv(io.BytesIO(z.read("ecotaxa_cruise.tsv")), sep="\t", skiprows=[1], keep_default_na=False,
                           encoding="utf-8-sig")
        assert set(rows["object_id"]) == set(expected) and set(rows["sample_id"]) == {V1, V2, V2_REORDERED}
        for name, object_id in zip(rows["img_file_name"], rows["object_id"]):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read(name)))), expected[object_id])


def test_a_bin_without_its_adc_or_named_unlike_a_bin_is_reported_not_dropped(tmp_path):
    rng = np.random.default_rng(5)
    write_bin(tmp_path, "D20240105T000000_IFCB101", [random_pixels(rng, 10, 12)], schema=2)
    (tmp_path / "D20240105T000000_IFCB101.adc").unlink()
    write_bin(tmp_path, "D20240106T000000_IFCB101", [random_pixels(rng, 10, 12)], schema=2)
    for ext in ("adc", "hdr", "roi"):
        (tmp_path / f"D20240106T000000_IFCB101.{ext}").rename(tmp_path / f"renamed.{ext}")
    write_bin(tmp_path, "D20240107T000000_IFCB101", [random_pixels(rng, 10, 12)], schema=2)
    inputs = list_inputs(tmp_path, "ifcb")
    errors = {item.id: item.error for item in inputs.items if item.error}
    assert "no .adc" in errors["D20240105T000000_IFCB101"]
    assert [item.id for item in inputs.items if not item.error] == ["D20240107T000000_IFCB101_00001"]
    assert inputs.ignored["other files"] == 3
