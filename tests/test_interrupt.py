"""A run killed with SIGKILL in the middle of any stage, then `dvc repro`, ends as an
uninterrupted run: outputs are written to a temporary name and renamed, so a kill leaves no
half-written file for DVC or the next stage to trust."""
from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.pipeline_repo import command_env, commit, make_small_repo, run, stages_run

# stage -> the output it is killed just before renaming (a stage writes several; this one is
# written after others, so the stage dies with part of its outputs in place)
KILL_POINTS = {
    "filter": "manifest.csv",
    "split": "val.csv",
    "extract@alexnet": "alexnet",  # the features folder, after every image went through the backbone
    "train@alexnet": "alexnet.pt",
    "evaluate@alexnet": "alexnet",  # its results folder, after the figures are in place
    "compare": "headline.json",  # the last output it writes
}
TIMING = ("seconds", "per_s")


def metric_values(repo) -> dict:
    """Every metric the pipeline wrote, without the timings (which differ run to run)."""
    values = {}
    for path in sorted((repo / "metrics").rglob("*.json")):
        values[str(path.relative_to(repo))] = strip_timing(json.loads(path.read_text()))
    return values


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_small_repo(tmp_path_factory.mktemp("interrupt"))
    run(repo, "dvc", "repro")
    commit(repo, "baseline")
    return repo, metric_values(repo)


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_sigkill_mid_stage_then_repro_gives_the_uninterrupted_result(repo, stage):
    repo, reference = repo
    killed = subprocess.run(["dvc", "repro", "--force", "--single-item", stage], cwd=repo, capture_output=True,
                            text=True, env=command_env({"PLANKTON_TEST_KILL_BEFORE": KILL_POINTS[stage]}),
                            start_new_session=True)  # its own process group: the kill takes dvc too
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert stages_run(killed.stdout) == [stage]
    resumed = run(repo, "dvc", "repro")
    # re-run, or restored from DVC's run-cache where every output of the stage is cached
    assert stage in stages_run(resumed.stdout) or f"Stage '{stage}' is cached" in resumed.stdout
    assert metric_values(repo) == reference
    assert "up to date" in run(repo, "dvc", "status").stdout
    # a killed run's temporary output (a *.partial beside its target) is ignored by git and DVC
    assert ".partial" not in run(repo, "git", "status", "--porcelain", "--ignored=no").stdout
