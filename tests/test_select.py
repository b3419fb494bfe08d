"""plankton-select: the active-learning step on a folder, an EcoTaxa export and IFCB bins; its
EcoTaxa upload checked as predict's is; bad input in one line; the pool's feature cache reused;
and two simulated rounds of the loop on synthetic features whose decision boundary is known."""
from __future__ import annotations

import dataclasses
import io
import json
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

from plankton_transfer.cli import select as select_cli
from plankton_transfer.data.ecotaxa_tsv import check_upload
from plankton_transfer.errors import UserError
from plankton_transfer.evaluation.openset import Scorers, fit_unknown_scorers
from plankton_transfer.models.heads import train_linear_head
from plankton_transfer.params.train import TrainParams
from tests.conftest import make_dataset
from tests.field_data import make_ecotaxa_export, roi_pixels, tiny_model, tiny_model_file, write_bin

CPU = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", classes=("Copepoda", "Diatomea", "other"))


@pytest.fixture
def counted(monkeypatch):
    """How many items the backbone is run on (the feature extractor), per call."""
    calls: list[int] = []
    real = select_cli.classify_features

    def counting(predictor, items, *args, **kwargs):
        calls.append(len(items))
        return real(predictor, items, *args, **kwargs)

    monkeypatch.setattr(select_cli, "classify_features", counting)
    return calls


def run(model, pool, out, *extra) -> pd.DataFrame:
    return select_cli.main(["--model", str(model), "--input", str(pool), "--out", str(out), *extra, *CPU])


def upload(out) -> pd.DataFrame:
    """The upload's table, after pyecotaxa and EcoTaxa's importer rules passed it (as predict's)."""
    (zip_path,) = out.glob("ecotaxa_*.zip")
    assert check_upload(zip_path) == []
    with zipfile.ZipFile(zip_path) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".tsv")]
        data = z.read(name)
        images = {n for n in z.namelist() if n.startswith("images/")}
    types = data.decode("utf-8-sig").splitlines()[1].split("\t")
    table = pd.read_csv(io.BytesIO(data), sep="\t", skiprows=[1], keep_default_na=False, dtype=str,
                        encoding="utf-8-sig")
    assert dict(zip(table.columns, types))["object_select_rank"] == "[f]"
    assert set(table["img_file_name"]) == images  # only the picks' images travel
    return table


def test_a_folder_pool_gives_the_whole_pool_in_the_csv_and_only_the_picks_in_the_upload(tmp_path, model, capsys):
    pool = make_dataset(tmp_path / "pool", {"station_1": 4, "station_2": 3})
    (pool / "truncated.jpg").write_bytes((pool / "station_1" / "station_1_000.jpg").read_bytes()[:300])
    out = tmp_path / "results" / "round1"
    table = run(model, pool, out, "-n", "3")
    written = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(written) == 8 and list(written.columns[-4:]) == ["selected", "selection_rank", "margin", "error"]
    assert written.set_index("id").loc["truncated.jpg", "error"] != ""
    ok = table[table["error"] == ""]
    picked = ok[ok["selected"]].sort_values("selection_rank")
    assert picked["selection_rank"].tolist() == [1, 2, 3]
    assert picked["margin"].max() <= ok[~ok["selected"]]["margin"].min()  # the smallest margins, best first
    assert picked["margin"].is_monotonic_increasing
    np.testing.assert_allclose(ok["margin"], ok["probability"] - ok["top2_probability"], atol=1e-4)
    rows = upload(out)
    assert set(rows["object_id"]) == {"pool_" + i.replace("/", "_") for i in picked["id"]}  # the same every round
    assert set(rows["object_annotation_status"]) == {"predicted"}
    assert rows.set_index("object_original_file").loc[picked["id"], "object_annotation_category"].tolist() == \
        picked["predicted"].tolist()  # the model's guess as the category
    assert sorted(rows["object_select_rank"].astype(int)) == [1, 2, 3]
    np.testing.assert_allclose(rows["object_select_margin"].astype(float).sort_values(), picked["margin"], rtol=1e-6)
    run_record = json.loads((out / "run.json").read_text())
    assert run_record["command"] == "plankton-select" and run_record["ecotaxa_objects"] == 3
    assert run_record["settings"]["strategy"] == "margin" and run_record["settings"]["features_extracted"] == 7
    summary = capsys.readouterr().out
    assert "3 of 7 usable images picked by margin" in summary and "1 failed" in summary


def set_status(export, ids: set[str], status: str) -> None:
    """'Validate' objects as EcoTaxa would: their status in the tables (types row kept)."""
    for table in export.rglob("ecotaxa_*.tsv"):
        frame = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
        hit = frame["object_id"].isin(ids)
        frame.loc[hit, "object_annotation_status"] = status
        frame.to_csv(table, sep="\t", index=False)


def test_an_ecotaxa_export_pool_is_its_unvalidated_objects_over_two_rounds(tmp_path, model, counted, capsys):
    export = tmp_path / "export"
    make_ecotaxa_export(export, per_class=2)
    set_status(export, {"sample_b_0_0", "sample_b_1_0", "sample_b_2_0"}, "predicted")  # three more to label
    out1 = tmp_path / "results" / "round1"
    table = run(model, export, out1, "-n", "2")
    pool = {"obj_predicted", "obj_unclassified", "sample_b_0_0", "sample_b_1_0", "sample_b_2_0"}
    assert set(table["id"]) == pool  # validated objects (and the missing validated one) are labelled already
    assert "validated objects (already labelled) 4" in capsys.readouterr().out
    first = set(table[table["selected"]]["id"])
    rows = upload(out1)
    assert set(rows["object_id"]) == first and set(rows["sample_id"]) <= {"sample_a", "sample_b"}  # EcoTaxa ids kept
    assert counted == [5]

    set_status(export, first, "validated")  # the person labels the picks in EcoTaxa and exports again
    out2 = tmp_path / "results" / "round2"
    second = run(model, export, out2, "-n", "2", "--strategy", "entropy")
    assert set(second["id"]) == pool - first  # never a labelled image again
    assert not first & set(second[second["selected"]]["id"])
    assert counted == [5]  # round 2: every feature from the cache
    assert set(upload(out2)["object_id"]) == set(second[second["selected"]]["id"])

    with pytest.raises(UserError, match=r"--count 4 but the pool holds only 3 images; ask for at most 3"):
        run(model, export, out2, "-n", "4")
    set_status(export, pool, "validated")
    with pytest.raises(UserError, match="is labelled already .validated in the export.; nothing is left to label"):
        run(model, export, out2, "-n", "1")


def test_a_folder_pool_s_second_round_leaves_out_what_the_first_round_s_export_validated(tmp_path, model):
    """The loop on new images: round 1's upload goes into EcoTaxa, its picks are validated and the
    project exported (the upload unzipped with those statuses stands in for the export); round 2
    on the same folder, with --labelled that export, never picks them again."""
    pool = make_dataset(tmp_path / "cruise", {"a": 4, "b": 4})
    first = run(model, pool, tmp_path / "results" / "round1", "-n", "3")
    picked = set(first[first["selected"]]["id"])
    export = tmp_path / "exports" / "round1"
    with zipfile.ZipFile(tmp_path / "results" / "round1" / "ecotaxa_round1.zip") as z:
        z.extractall(export)
    set_status(export, {"cruise_" + i.replace("/", "_") for i in picked}, "validated")
    second = run(model, pool, tmp_path / "results" / "round2", "-n", "5", "--labelled", str(export))
    assert set(second["id"]) == set(first["id"]) - picked  # the pool less what is labelled
    assert set(upload(tmp_path / "results" / "round2")["object_id"]) == {
        "cruise_" + i.replace("/", "_") for i in second[second["selected"]]["id"]}
    with pytest.raises(UserError, match="--count 6 but the pool holds only 5 images"):
        run(model, pool, tmp_path / "results" / "round2", "-n", "6", "--labelled", str(export))


def test_ifcb_bins_are_a_pool_of_rois_written_as_png(tmp_path, model):
    rng = np.random.default_rng(4)
    v1, v2 = "IFCB5_2012_028_081515", "D20130526T095207_IFCB013"
    expected = write_bin(tmp_path / "ifcb" / "2012", v1, [roi_pixels(rng, 40, 60), None, roi_pixels(rng, 30, 50)],
                         schema=1, leading=1)
    expected |= write_bin(tmp_path / "ifcb" / "2013", v2, [roi_pixels(rng, 50, 70), roi_pixels(rng, 36, 36)],
                          schema=2)
    out = tmp_path / "results" / "cruise"
    table = run(model, tmp_path / "ifcb", out, "-n", "2", "--strategy", "least_confidence")
    assert set(table["id"]) == set(expected)
    rows = upload(out)
    assert len(rows) == 2 and set(rows["object_id"]) == set(table[table["selected"]]["id"])
    assert all(name.endswith(".png") for name in rows["img_file_name"]) and set(rows["sample_id"]) <= {v1, v2}
    assert "object_select_least_confidence" in rows.columns


def test_the_cache_is_reused_by_another_strategy_count_and_head(tmp_path, model, counted, monkeypatch):
    pool = make_dataset(tmp_path / "pool", {"a": 3, "b": 3})
    run(model, pool, tmp_path / "r" / "one", "-n", "2")
    assert counted == [6]
    loads = []
    monkeypatch.setattr(select_cli, "load_predictor", lambda *a, **k: loads.append(1))
    for strategy in ("random", "least_confidence", "entropy", "kcenter", "cluster", "unknown_first"):
        run(model, pool, tmp_path / "r" / "one", "-n", "3", "--strategy", strategy, "--seed", "7")
    retrained = tmp_path / "retrained.pt"  # the next round's model: another head, the same backbone
    classes = ("Copepoda", "Diatomea", "other")
    dataclasses.replace(tiny_model(classes), head=tiny_model(classes, seed=5).head).save(retrained)
    run(retrained, pool, tmp_path / "r" / "two", "-n", "4")
    assert counted == [6] and not loads  # no feature extractor, not even its network, for cached images
    assert len(list((tmp_path / "r" / ".plankton-cache").glob("*/part-*.npy"))) == 1


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_selection(tmp_path, model, counted, monkeypatch,
                                                                         capsys):
    import errno

    from plankton_transfer.data.feature_cache import FeatureCache

    def read_only(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(FeatureCache, "add", read_only)
    pool = make_dataset(tmp_path / "pool", {"a": 2})
    run(model, pool, tmp_path / "out", "-n", "1")
    run(model, pool, tmp_path / "out", "-n", "1")
    assert counted == [2, 2] and "were not cached" in capsys.readouterr().err
    assert len(upload(tmp_path / "out")) == 1


def test_a_changed_file_is_extracted_again_and_only_it(tmp_path, model, counted):
    pool = make_dataset(tmp_path / "pool", {"a": 3})
    run(model, pool, tmp_path / "out", "-n", "1")
    image = pool / "a" / "a_001.jpg"
    image.write_bytes(image.read_bytes() + b"\0")  # same name, new content (size and mtime change)
    cache = tmp_path / "elsewhere"
    run(model, pool, tmp_path / "out", "-n", "1", "--features-cache", str(cache))
    run(model, pool, tmp_path / "out", "-n", "1")
    assert counted == [3, 3, 1]  # a new cache folder starts empty; the default one lacks only the changed image
    (meta,) = cache.glob("*/meta.json")
    assert json.loads(meta.read_text())["feature_dim"] == 4096


def test_kcenter_counts_labelled_images_and_the_export_s_validated_objects(tmp_path, model, counted, capsys):
    pool = make_dataset(tmp_path / "pool", {"a": 3, "b": 2})
    labelled = make_dataset(tmp_path / "labelled", {"a": 2}, seed=9)
    out = tmp_path / "out"
    table = run(model, pool, out, "-n", "2", "--strategy", "kcenter", "--labelled", str(labelled))
    assert counted == [7]  # pool and labelled images in one pass, both cached
    assert "labelled: 2 feature rows" in capsys.readouterr().out
    picked = table[table["selected"]]
    assert picked["kcenter_distance"].notna().all() and table[~table["selected"]]["kcenter_distance"].isna().all()
    run(model, pool, out, "-n", "2", "--strategy", "kcenter")
    assert "k-center starts from the image nearest the pool mean" in capsys.readouterr().out
    run(model, pool, out, "-n", "1", "--strategy", "margin", "--labelled", str(labelled))
    assert "--labelled is used by the kcenter strategy only" in capsys.readouterr().err
    export = tmp_path / "export"
    make_ecotaxa_export(export, per_class=2)
    run(model, export, tmp_path / "out2", "-n", "2", "--strategy", "kcenter")
    settings = json.loads((tmp_path / "out2" / "run.json").read_text())["settings"]
    assert settings["labelled_rows"] == 6  # the 7 validated objects but obj_missing, which has no image
    assert settings["labelled"] == "6 validated objects of the pool's export"


def test_kcenter_takes_the_pipeline_s_features_folder_and_refuses_another_backbone_s(tmp_path, model):
    from tests.field_data import write_feature_meta

    pool = make_dataset(tmp_path / "pool", {"a": 3})
    features = tmp_path / "features"
    features.mkdir()
    write_feature_meta(features, "alexnet", ["a", "b"], 4096, {"train": 2, "val": 1})
    np.save(features / "train.npy", np.zeros((2, 4096), np.float16))
    np.save(features / "val.npy", np.ones((1, 4096), np.float16))
    run(model, pool, tmp_path / "out", "-n", "2", "--strategy", "kcenter", "--labelled", str(features))
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["labelled_rows"] == 3
    write_feature_meta(features, "vgg11", ["a", "b"], 4096, {"train": 2, "val": 1})
    with pytest.raises(UserError, match="holds vgg11 features"):
        run(model, pool, tmp_path / "out", "-n", "2", "--strategy", "kcenter", "--labelled", str(features))


@pytest.mark.parametrize("case", ["count too large", "count over the decodable", "empty folder", "unknown strategy",
                                  "count 0", "mahalanobis", "cache inside out", "cache is a file", "all unreadable"])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, model, case, monkeypatch, capsys):
    pool = make_dataset(tmp_path / "pool", {"a": 2})
    (pool / "notes.png").write_text("not an image\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "text.jpg").write_text("hello")
    args, message = {
        "count too large": (["-n", "5"], "--count 5 but the pool holds only 3 images; ask for at most 3"),
        "count over the decodable": (["-n", "3"], "--count 3 but the pool holds only 2 usable images of 3 (1 cannot "
                                                  "be used, e.g. notes.png: "),
        "empty folder": (["-n", "1", "--input", str(tmp_path / "empty")], "no images in"),
        "unknown strategy": (["-n", "1", "--strategy", "uncertainty"], "invalid choice: 'uncertainty'"),
        "count 0": (["-n", "0"], "argument -n/--count: 0 is under 1"),
        "mahalanobis": (["-n", "1", "--strategy", "unknown_first", "--unknown-score", "mahalanobis"],
                        "needs the model's training features"),
        "cache inside out": (["-n", "1", "--features-cache", str(tmp_path / "out" / "c")], "lies inside --out"),
        "cache is a file": (["-n", "1", "--features-cache", str(tmp_path / "bad" / "text.jpg")], "is not a folder"),
        "all unreadable": (["-n", "1", "--input", str(tmp_path / "bad")], "none of the 1 pool images can be used"),
    }[case]
    argv = ["plankton-select", "--model", str(model), "--input", str(pool), "--out", str(tmp_path / "out"), *CPU]
    monkeypatch.setattr(sys, "argv", argv + args)
    with pytest.raises(SystemExit) as exit_status:
        select_cli.run()
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2 and "Traceback" not in stderr
    assert message in stderr
    if case not in ("unknown strategy", "count 0"):  # argparse prints its usage line first
        (line,) = [line for line in stderr.splitlines() if line.strip() and not line.startswith("predict:")]  # tqdm
        assert line.startswith("error: ")
    assert not (tmp_path / "out").exists()


# ---- two simulated rounds on synthetic features with a known decision boundary ----

W, B = np.array([1.5, -1.0]), 0.25  # the truth: class 1 where W.x + B > 0


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) * 2.0
    return x.astype(np.float32), (x @ W + B > 0).astype(np.int64)


def distance_to(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Distance of each row to the line where the two logits are equal."""
    w, b = weight[1] - weight[0], bias[1] - bias[0]
    return np.abs(x @ w + b) / np.linalg.norm(w)


def test_two_rounds_margin_picks_the_images_nearest_the_boundary_and_never_a_labelled_one():
    x, y = synthetic(400, seed=0)
    x_val, y_val = synthetic(60, seed=1)
    truth = np.abs(x @ W + B) / np.linalg.norm(W)
    rng = np.random.default_rng(2)
    labelled = [int(i) for c in (0, 1) for i in rng.choice(np.flatnonzero(y == c), 3, replace=False)]
    cfg = TrainParams(lr=0.05, max_epochs=300, patience=300, batch_size=8)
    base = tiny_model(("neg", "pos"), dim=2)
    n = 10
    for round_number in (1, 2):
        head = train_linear_head(x[labelled], y[labelled], x_val, y_val, 2, cfg, seed=round_number)
        model = dataclasses.replace(base, head=head)
        unlabelled = np.setdiff1d(np.arange(len(x)), labelled)
        choice = select_cli.choose(model, x[unlabelled], "margin", n)
        picked = unlabelled[choice.picked]
        assert not set(picked) & set(labelled) and len(set(picked)) == n
        to_model = distance_to(head.weight.numpy(), head.bias.numpy(), x[unlabelled])
        nearest = np.sort(to_model)
        assert to_model[choice.picked].max() <= nearest[n - 1] + 1e-5  # the n nearest the model's boundary...
        assert np.all(np.diff(to_model[choice.picked]) >= -1e-5)  # ...nearest first
        assert np.isfinite(choice.values).all() and np.all(np.diff(choice.picked_values) >= 0)
        if round_number == 2:  # 16 labels: the head's boundary is near the true one, and so are its picks
            assert truth[picked].mean() < np.median(truth[unlabelled]) / 2
        labelled += [int(i) for i in picked]  # the oracle labels them (y)
    assert len(set(labelled)) == 6 + 2 * n


def test_margin_with_the_true_boundary_picks_exactly_the_images_nearest_it():
    import torch

    from plankton_transfer.models.linear_head import LinearHead

    x, _ = synthetic(300, seed=3)
    truth = np.abs(x @ W + B) / np.linalg.norm(W)
    head = LinearHead(torch.tensor(np.stack([np.zeros(2), W]), dtype=torch.float32),
                      torch.tensor([0.0, B], dtype=torch.float32))  # logit gap = W.x + B: the truth
    choice = select_cli.choose(dataclasses.replace(tiny_model(("neg", "pos"), dim=2), head=head), x, "margin", 15)
    assert truth[choice.picked].max() <= np.sort(truth)[14] + 1e-5
    assert set(choice.picked) == set(np.argsort(truth)[:15])


def test_the_unknown_score_from_the_head_alone_equals_the_fitted_scorers_and_refuses_the_others():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), np.arange(40) % 3
    weight, bias = rng.normal(size=(3, 5)), rng.normal(size=3)
    fitted = fit_unknown_scorers(x, y, weight, bias, temperature=1.7)
    head = Scorers.from_head(weight, bias, temperature=1.7)
    for name in ("msp", "energy"):
        np.testing.assert_allclose(head.score(name, x), fitted.score(name, x))
    with pytest.raises(ValueError, match="needs the model's training features"):
        head.score("mahalanobis", x)
    model = tiny_model(("a", "b", "c"), dim=5)
    choice = select_cli.choose(model, x, "unknown_first", 4, scorer=fitted, unknown_score="mahalanobis")
    assert choice.column == "unknown_mahalanobis"  # a fitted scorer object plugs in as it is
    assert set(choice.picked) == set(np.argsort(-fitted.score("mahalanobis", x))[:4])


def test_the_feature_key_ignores_the_head_but_not_the_input_recipe_or_the_weights():
    from plankton_transfer.models.inference import features_fingerprint

    a = tiny_model(seed=0)
    retrained = dataclasses.replace(a, head=tiny_model(seed=5).head)
    assert features_fingerprint(a) == features_fingerprint(retrained) and a.fingerprint() != retrained.fingerprint()
    cropped = dataclasses.replace(a, input=dataclasses.replace(a.input, mode="crop"))
    other_init = dataclasses.replace(a, weights=dataclasses.replace(a.weights, init_seed=1))
    assert len({features_fingerprint(m) for m in (a, cropped, other_init)}) == 3
