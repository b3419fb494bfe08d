"""The extract stage, the feature store and the device (GPU) JPEG decoding path, on CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from plankton_transfer.data.features import FeatureWriter, load_split
from plankton_transfer.data.preprocess import TensorPreprocess, make_transform
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import get_backbone
from stages import extract as extract_stage
from tests.conftest import filter_and_split, make_dataset, write_params


def test_feature_writer_routes_rows_across_split_boundaries(tmp_path):
    writer = FeatureWriter(tmp_path, {"train": 3, "val": 2, "test": 2}, dim=2)
    rows = np.arange(14, dtype=np.float16).reshape(7, 2)
    writer.write(0, rows[:2])
    writer.write(2, rows[2:6])  # straddles train | val | test
    writer.write(6, rows[6:])
    writer.close()
    for name, (lo, hi) in {"train": (0, 3), "val": (3, 5), "test": (5, 7)}.items():
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), rows[lo:hi])


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("size", [(300, 90), (90, 300), (120, 120), (37, 61)])
def test_tensor_preprocessing_matches_the_pillow_path(mode, size):
    rng = np.random.default_rng(0)
    a = np.full((size[1], size[0], 3), 220, dtype=np.uint8)
    a[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = rng.integers(0, 255, 3)
    img = Image.fromarray(a)
    for name in ("alexnet", "efficientnet_lite0"):
        pre = get_backbone(name).preprocess
        pil = make_transform(pre, mode)(img).float()
        tensor = TensorPreprocess(pre, mode)(torch.from_numpy(a).permute(2, 0, 1)).float()
        assert pil.shape == tensor.shape
        assert (pil - tensor).abs().mean() < 2.0  # resampling round-off only


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_images_of_one_size_are_preprocessed_together_with_the_same_result(mode):
    """GPU decoding preprocesses a batch's images of one size in one call (TensorPreprocess.many):
    each image, its own border colour included, comes out as when done alone, in input order."""
    rng = np.random.default_rng(1)
    sizes = [(90, 300), (120, 120), (90, 300), (61, 37), (120, 120), (90, 300)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in sizes]
    images[2][:, 0, :] = 7  # a different border from its same-size neighbours
    prep = TensorPreprocess(get_backbone("alexnet").preprocess, mode)
    together = prep.many(images)
    assert len(together) == len(images)
    for img, out in zip(images, together):
        assert torch.equal(out, prep(img))


@pytest.fixture
def prepared(tmp_path):
    raw = make_dataset(tmp_path / "raw", {"a": 6, "b": 6, "c": 6})
    Image.fromarray(np.full((40, 30), 90, np.uint8)).save(raw / "a" / "grey.png")  # not a JPEG: Pillow path
    params = write_params(tmp_path / "params.yaml", filter={"min_images_per_class": 3},
                          extract={"batch_size": 8})
    filter_and_split(tmp_path, raw, params)
    return tmp_path, raw, params


def run_extract(tmp_path, raw, params, out_name: str, model: str = "alexnet") -> dict:
    return extract_stage.main(["--model", model, "--raw", str(raw), "--split-dir", str(tmp_path / "split"),
                               "--out-dir", str(tmp_path / out_name), "--params", str(params)])


def test_extract_writes_float16_features_labels_and_meta(prepared):
    tmp_path, raw, params = prepared
    meta = run_extract(tmp_path, raw, params, "feat")
    assert meta.sizes == {"train": 13, "val": 3, "test": 3}  # a: 7 images (5/1/1), b and c: 6 (4/1/1)
    x, y = load_split(tmp_path / "feat", "train")
    assert x.dtype == np.float16 and x.shape == (13, 4096) and y.shape == (13,)
    assert meta.weights.pretrained is False and meta.decoded_on_device == 0
    assert json.loads((tmp_path / "feat" / "meta.json").read_text())["classes"] == ["a", "b", "c"]
    again = run_extract(tmp_path, raw, params, "feat2")
    assert np.array_equal(load_split(tmp_path / "feat2", "train")[0], x) and again.classes == meta.classes


def test_device_decoding_path_gives_the_same_features(prepared):
    """The GPU path (raw JPEG bytes to torchvision.io.decode_jpeg on the device), run on CPU."""
    tmp_path, raw, params = prepared
    base = run_extract(tmp_path, raw, params, "pil", model="efficientnet_lite0")
    write_params(params, filter={"min_images_per_class": 3},
                 extract={"batch_size": 8, "decode": "device"})
    dev = run_extract(tmp_path, raw, params, "dev", model="efficientnet_lite0")
    assert base.decoded_on_device == 0 and dev.decoded_on_device == 18  # all but grey.png
    for split in ("train", "val", "test"):
        a = load_split(tmp_path / "pil", split)[0].astype(np.float32)
        b = load_split(tmp_path / "dev", split)[0].astype(np.float32)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() > 0.98, cosine


def test_a_file_changed_after_filtering_stops_with_a_clear_error(prepared):
    tmp_path, raw, params = prepared
    (raw / "b" / "b_000.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="b/b_000.jpg.*changed since the filter stage"):
        run_extract(tmp_path, raw, params, "feat")
    assert not (tmp_path / "feat").exists()  # no half-written output
