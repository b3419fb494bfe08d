"""Leakage: near-duplicate images across splits are found, and grouped splits keep them (or a
sample's images) together."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from plankton_transfer.data.grouping import assign_grouped_splits
from plankton_transfer.data.leakage import near_duplicate_pairs, near_duplicates
from plankton_transfer.errors import UserError
from plankton_transfer.params.split import SplitParams
from stages import filter as filter_stage
from stages import split as split_stage
from tests.conftest import write_params

CLASSES, BASES = ("Copepoda", "Diatom", "Noctiluca"), 8
SAMPLE_PATTERN = r"(D\d{8}T\d{6}_IFCB\d+)_"


def pattern_image(rng: np.random.Generator) -> Image.Image:
    """A smooth random pattern: distinct images have distant perceptual hashes."""
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((96, 80), Image.BICUBIC)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """Each image three times under unrelated names: as taken, resized to 64 %, re-encoded at JPEG
    quality 40. File names carry an IFCB-like sample id shared by one image of each class."""
    root = tmp_path_factory.mktemp("copies")
    raw, rng = root / "raw", np.random.default_rng(11)
    base_of = {}
    for cls in CLASSES:
        (raw / cls).mkdir(parents=True)
        for b in range(BASES):
            image, sample = pattern_image(rng), f"D2019060{b + 1}T120000_IFCB104"
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=40)
            names = [f"{sample}_{b:05d}.jpg", f"{sample}_{b + 100:05d}.png", f"{sample}_{b + 200:05d}.jpg"]
            image.save(raw / cls / names[0], quality=95)
            image.resize((61, 51), Image.BILINEAR).save(raw / cls / names[1])
            (raw / cls / names[2]).write_bytes(buf.getvalue())
            base_of.update({f"{cls}/{n}": f"{cls}/{b}" for n in names})
    params = write_params(root / "params.yaml", data={"raw": str(raw)}, filter={})
    filter_stage.main(["--manifest", str(root / "manifest.csv"), "--report", str(root / "report.json"),
                       "--cache-file", str(root / "cache.csv"),
                       "--params", str(params)])
    return root, base_of


def run_split(root, name: str, **split) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    params = write_params(root / f"{name}.yaml", data={"raw": str(root / "raw")}, split=split)
    out = root / name
    split_stage.main(["--manifest", str(root / "manifest.csv"), "--out-dir", str(out / "split"),
                      "--report", str(out / "report.json"),
                      "--near-duplicates", str(out / "pairs.csv"), "--params", str(params)])
    parts = pd.concat([pd.read_csv(out / "split" / f"{s}.csv", keep_default_na=False)
                       for s in ("train", "val", "test")])
    return parts, json.loads((out / "report.json").read_text()), pd.read_csv(out / "pairs.csv")


def test_without_grouping_copies_straddle_splits_and_every_pair_is_reported(filtered):
    root, base_of = filtered
    parts, metrics, pairs = run_split(root, "plain")
    base = parts["path"].map(base_of)
    straddling = {(a, b) for a in parts["path"] for b in parts["path"]
                  if a < b and base_of[a] == base_of[b]
                  and parts.set_index("path").loc[a, "split"] != parts.set_index("path").loc[b, "split"]}
    assert straddling, "the plain stratified split should separate some copies (else this test shows nothing)"
    assert {tuple(sorted(p)) for p in zip(pairs["path_a"], pairs["path_b"])} == straddling
    assert metrics["leakage"]["near_duplicate_pairs"] == len(straddling) == len(pairs)
    assert (pairs["split_a"] != pairs["split_b"]).all() and (pairs["distance"] <= 4).all()
    assert pairs["confirmed"].all() and (pairs["similarity"] >= 0.99).all()  # resized, re-encoded: same pixels
    assert base.nunique() == len(CLASSES) * BASES


def test_near_duplicate_groups_never_straddle_splits(filtered):
    root, base_of = filtered
    parts, metrics, pairs = run_split(root, "near", group="near_duplicates")
    splits_per_base = parts.groupby(parts["path"].map(base_of))["split"].nunique()
    assert (splits_per_base == 1).all() and len(splits_per_base) == len(CLASSES) * BASES
    assert parts.groupby("group")["split"].nunique().max() == 1
    assert parts["group"].nunique() == len(CLASSES) * BASES  # each image and its two copies, one cluster
    assert metrics["leakage"]["near_duplicate_pairs"] == 0 and pairs.empty
    assert set(parts["split"]) == {"train", "val", "test"}
    for cls in CLASSES:  # stratified as far as groups allow: every class in every split
        assert set(parts[parts["class"] == cls]["split"]) == {"train", "val", "test"}
    report = json.loads((root / "near" / "report.json").read_text())
    assert report["grouping"]["groups_in_several_splits"] == 0
    assert report["fractions"]["largest_difference"] == metrics["fraction_difference"] < 0.1


def test_a_group_regex_keeps_each_sample_in_one_split_and_is_deterministic(filtered):
    root, _ = filtered
    parts, metrics, _ = run_split(root, "regex", group=SAMPLE_PATTERN)
    sample = parts["path"].str.extract(SAMPLE_PATTERN)[0]
    assert (parts["group"] == sample).all() and sample.nunique() == BASES
    assert (parts["sample"] == sample).all()  # the pattern's group is each image's sample (evaluate's per-sample counts)
    assert parts.groupby(sample)["split"].nunique().max() == 1
    assert set(parts["split"]) == {"train", "val", "test"}
    again, _, _ = run_split(root, "regex_again", group=SAMPLE_PATTERN)
    assert sorted(zip(again["path"], again["split"])) == sorted(zip(parts["path"], parts["split"]))
    report = json.loads((root / "regex" / "report.json").read_text())
    assert report["fractions"]["asked"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert report["grouping"]["groups"] == BASES and report["grouping"]["unmatched_paths"] == 0


def test_a_group_holding_a_whole_class_is_warned_about_and_reported(filtered, capsys):
    root, _ = filtered
    parts, _, _ = run_split(root, "whole_class", group=r"^(Copepoda)/")
    assert set(parts[parts["class"] == "Copepoda"]["split"]) == {"train"}
    report = json.loads((root / "whole_class" / "report.json").read_text())
    assert report["classes_missing"] == {"train": [], "val": ["Copepoda"], "test": ["Copepoda"]}
    out = capsys.readouterr().out
    assert "warning: no val image of Copepoda" in out and "warning: no test image of Copepoda" in out


def test_a_regex_that_matches_nothing_or_has_no_group_is_refused(filtered):
    root, _ = filtered
    with pytest.raises(UserError, match="matches no image path"):
        run_split(root, "nomatch", group=r"(cruise\d+)")
    with pytest.raises(UserError, match="no capture group"):
        SplitParams(group=r"D\d+")


def test_pigeonhole_search_finds_exactly_the_pairs_brute_force_finds():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2 ** 63, 300, dtype=np.uint64)
    values[150:] = values[:150] ^ (np.uint64(1) << rng.integers(0, 64, 150).astype(np.uint64))  # 1-bit copies
    values[:40] &= np.uint64(0xFFFF)  # a crowded bucket: many hashes share their high pieces
    hexes = [f"{v:016x}" for v in values]
    distance = np.bitwise_count(values[:, None] ^ values[None, :])
    for max_distance in (0, 1, 4, 12):
        i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
        found = near_duplicate_pairs(hexes, max_distance)
        assert sorted(zip(found[:, 0], found[:, 1])) == sorted(zip(i, j))
        assert (found[:, 2] == distance[found[:, 0], found[:, 1]]).all()


def test_grouped_split_keeps_a_datasets_own_val_split():
    rows = [{"path": f"{s}/{c}/{i}.jpg", "class": c, "split": s} for s, n in (("train", 20), ("val", 3))
            for c in "ab" for i in range(n)]
    manifest = pd.DataFrame(rows)
    groups = manifest["path"].str.extract(r"/(\d+)\.jpg")[0].astype(int).floordiv(2).astype(str) + manifest["split"]
    split = assign_grouped_splits(manifest, SplitParams(), seed=0, groups=groups)
    assert (split[manifest["split"] == "val"] == "val").all()
    assert set(split[manifest["split"] == "train"]) == {"train", "test"}
    assert split.groupby(groups).nunique().max() == 1


def blob(rng: np.random.Generator) -> Image.Image:
    """A small dark organism on a plain background: different blobs hash within a few bits."""
    img = Image.new("RGB", (90, 90), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    cx, cy, rx, ry = 45 + rng.integers(-6, 7), 45 + rng.integers(-6, 7), rng.integers(10, 16), rng.integers(10, 16)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(40, 40, 40))
    for _ in range(4):
        x, y = rng.integers(cx - rx, cx + rx), rng.integers(cy - ry, cy + ry)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(90, 90, 90))
    return img.filter(ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """Distinct blobs of two classes (hash candidates of one look, not copies); one blob also
    filed, resized, under the other class (a real label conflict)."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(3)
    for cls in ("Detritus", "Egg"):
        (root / "raw" / cls).mkdir(parents=True)
        for i in range(12):
            blob(rng).save(root / "raw" / cls / f"{cls}_{i:02d}.png")
    Image.open(root / "raw" / "Egg" / "Egg_00.png").resize((80, 80), Image.BILINEAR).save(
        root / "raw" / "Detritus" / "relabelled.png")
    params = write_params(root / "params.yaml", data={"raw": str(root / "raw")}, filter={})
    filter_stage.main(["--manifest", str(root / "manifest.csv"), "--report", str(root / "report.json"),
                       "--cache-file", str(root / "cache.csv"), "--params", str(params)])
    return root


def test_hash_candidates_are_confirmed_by_pixels_so_lookalike_blobs_are_not_leakage(blobs):
    _, metrics, pairs = run_split(blobs, "blobs_plain")
    lookalike = pairs[pairs["path_a"].str.contains("relabelled") == pairs["path_b"].str.contains("relabelled")]
    assert not lookalike.empty, "distinct blobs should give hash candidates (else this test shows nothing)"
    assert not lookalike["confirmed"].any() and (lookalike["similarity"] < 0.99).all()
    leakage = metrics["leakage"]
    assert leakage["near_duplicate_pairs"] == int((pairs["confirmed"] & pairs["same_class"]).sum())
    assert leakage["unconfirmed_candidates"] == int((~pairs["confirmed"]).sum()) >= len(lookalike)


def test_one_image_filed_under_two_classes_is_a_label_conflict_not_a_group(blobs):
    parts, metrics, _ = run_split(blobs, "blobs_grouped", group="near_duplicates")
    by_path = parts.set_index("path")
    # nothing confirmed within a class, so no group joins two images: the relabelled copy is not
    # pulled into the other class's split
    assert parts["group"].nunique() == len(parts)
    report = json.loads((blobs / "blobs_grouped" / "report.json").read_text())
    assert report["grouping"]["grouped_images"] == 0
    conflict = by_path.loc["Detritus/relabelled.png", "split"] != by_path.loc["Egg/Egg_00.png", "split"]
    assert metrics["leakage"]["label_conflict_pairs"] == int(conflict)
    manifest = pd.read_csv(blobs / "manifest.csv", keep_default_na=False)
    found = near_duplicates(manifest, 4, 0.99, lambda path: Image.open(blobs / "raw" / path).convert("RGB"))
    confirmed = found[found["confirmed"]]
    assert sorted(confirmed[["path_a", "path_b"]].iloc[0]) == ["Detritus/relabelled.png", "Egg/Egg_00.png"]
    assert len(confirmed) == 1 and not confirmed["same_class"].iloc[0]
