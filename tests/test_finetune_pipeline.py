"""End to end: the default `dvc repro` has no fine-tuning; `dvc exp run -S
'finetune.models=[efficientnet_lite0]'` fine-tunes it (offline: the pip package's weights),
evaluates the fine-tuned model and compares it beside the frozen one, with the paired test, in
compare.md, metrics/headline.json and `dvc exp show`."""
from __future__ import annotations

import json

import pytest

from tests.conftest import make_dataset
from tests.pipeline_repo import commit, make_repo, run, stages_run

LITE0 = "efficientnet_lite0"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Three classes of 8 small images, efficientnet_lite0 only, tiny settings; the frozen
    baseline committed, then the fine-tuning experiment."""
    repo = tmp_path_factory.mktemp("finetune-pipeline")
    make_dataset(repo / "data" / "raw", {"a": 8, "b": 8, "c": 8})
    make_repo(repo, models=[LITE0], data={"raw": "data/raw"}, filter={"min_images_per_class": 3},
              extract={"batch_size": 8}, train={"max_epochs": 15}, crossval={"folds": 2, "repeats": 1},
              finetune={"max_epochs": 2, "batch_size": 8})
    baseline = run(repo, "dvc", "repro")
    commit(repo, "frozen baseline")
    experiment = run(repo, "dvc", "exp", "run", "-S", f"finetune.models=[{LITE0}]")
    return repo, baseline, experiment


def test_the_default_pipeline_runs_no_fine_tuning(repo):
    repo, baseline, _ = repo
    ran = stages_run(baseline.stdout)
    assert f"extract@{LITE0}" in ran and not [s for s in ran if "finetune" in s or "_ft" in s]
    assert set(json.loads(run(repo, "git", "show", "HEAD:metrics/headline.json").stdout)) == {LITE0}


def test_the_experiment_fine_tunes_evaluates_and_compares_beside_the_frozen_model(repo):
    repo, _, experiment = repo
    assert sorted(stages_run(experiment.stdout)) == ["compare", f"evaluate_ft@{LITE0}", f"finetune@{LITE0}"]
    table = (repo / "metrics" / "compare" / "compare.md").read_text()
    main_table = table.split("\n## ")[0]
    assert f"| {LITE0} | ImageNet" in main_table and f"| {LITE0}-ft | ImageNet" in main_table
    assert "fine-tuned (all 9 blocks)" in main_table
    pairs = json.loads((repo / "metrics" / "compare" / "pairs.json").read_text())
    assert len(pairs) == 1 and table.count("McNemar p") == 1  # the paired test of the two
    assert {pairs[0]["model_a"], pairs[0]["model_b"]} == {LITE0, f"{LITE0}-ft"}
    assert f"Not cross-validated: {LITE0}-ft." in table
    headline = json.loads((repo / "metrics" / "headline.json").read_text())
    assert set(headline) == {LITE0, f"{LITE0}-ft"}
    assert set(headline[f"{LITE0}-ft"]) == set(headline[LITE0]) - {"cv_acc", "unknown_auroc"}  # no crossval, openset
    curves = json.loads((repo / "plots" / "curves.json").read_text())
    assert {row["series"] for row in curves} == {LITE0, f"{LITE0}-ft"}
    checkpoints = repo / "checkpoints" / f"{LITE0}-ft"
    assert [p.name for p in checkpoints.iterdir()] == ["finished.json"]


def test_dvc_exp_show_lists_the_fine_tuned_model_beside_the_frozen_one(repo):
    repo, _, _ = repo
    shown = run(repo, "dvc", "exp", "show", "--json").stdout
    assert f'"{LITE0}-ft"' in shown and f'"{LITE0}"' in shown and '"acc_lo"' in shown
    assert json.loads(run(repo, "dvc", "status", "--json").stdout) == {}  # nothing left to run
