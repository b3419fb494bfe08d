"""Comparing experiments, the CI report, the reproduction check and the offline plots page."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from tests.pipeline_repo import command_env, commit, make_small_repo, run
from plankton_transfer.cli.experiments import comparison


def exp_record(rev: str, name: str, lr: float, accuracies: dict[str, float], experiments=()) -> dict:
    metrics = {"metrics/headline.json": {"data": {m: {"acc": a, "acc_lo": a - 0.1, "acc_hi": a + 0.05, "bal_acc": a,
                                                      "f1": a, "cv_acc": a} for m, a in accuracies.items()}}}
    return {"rev": rev, "name": name, "data": {"params": {"params.yaml": {"data": {"train": {"lr": lr}}}},
                                               "metrics": metrics},
            "experiments": [{"revs": [e]} for e in experiments]}


def test_experiment_table_puts_each_models_baseline_and_new_accuracy_together_in_120_columns():
    models = {"alexnet": 0.2, "vgg11": 0.4, "efficientnet_lite0": 0.9}
    exp = exp_record("b" * 40, "quick-tern", 0.01, {m: a + 0.05 for m, a in models.items()})
    records = [{"rev": "workspace", "data": {}}, exp_record("a" * 40, "main", 0.001, models, [exp])]
    table = comparison(records)
    lite = table[table["model"] == "efficientnet_lite0"]
    assert lite["experiment"].tolist() == ["main (baseline)", "quick-tern"]
    assert lite["acc"].tolist() == pytest.approx([0.9, 0.95])
    assert lite["changed params"].tolist() == ["-", "train.lr=0.01"]
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    assert max(len(line) for line in text.splitlines()) <= 120


def test_offline_plots_page_needs_no_network():
    page = (ROOT / ".dvc" / "plots" / "offline.html").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN script tags have nowhere to go
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']https?:", page)
    assert "vega-lite@5.2.0" in page and "vega-embed@6.18.2" in page
    assert "html_template = plots/offline.html" in (ROOT / ".dvc" / "config").read_text()


def test_github_workflow_runs_the_report_script_and_posts_it():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "report.yml").read_text())
    steps = workflow["jobs"]["report"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "make report BASE=" in commands and "GITHUB_STEP_SUMMARY" in commands and "cml comment" in commands
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads the bare key `on` as True
    assert "pull_request" in triggers


@pytest.fixture(scope="module")
def branch_repo(tmp_path_factory):
    """A baseline commit, then a commit that changes the learning rate."""
    repo = make_small_repo(tmp_path_factory.mktemp("report"))
    run(repo, "dvc", "repro")
    commit(repo, "baseline")
    run(repo, "git", "checkout", "-q", "-b", "faster-lr")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.1
    params["split"].update({"train": 0.6, "val": 0.2, "test": 0.2})  # more test images: the interval must move
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "dvc", "repro")
    commit(repo, "lr 0.1, larger test split")
    return repo


def tool(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=repo, env=command_env(), capture_output=True, text=True)


def test_report_against_the_previous_commit(branch_repo):
    done = tool(branch_repo, "plankton_transfer.cli.report", "--base", "HEAD~1", "--out-dir", "report")
    assert done.returncode == 0, done.stderr
    text = (branch_repo / "report" / "report.md").read_text()
    assert "| params.yaml | `train.lr` | 0.0010 | 0.1000 |" in text
    assert re.search(r"\| metrics/headline.json \| `alexnet\.acc_lo` \| [0-9.]+ \| [0-9.]+ \|", text)
    changed = text.split("## Metrics changed")[1].split("<details>")[0]
    assert changed.count("\n|") <= 2 + 25  # the CI report's metrics diff stays a screen (issue 16)
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert links == ["images/alexnet_confusion.png"]
    assert (branch_repo / "report" / links[0]).stat().st_size > 5000
    html = (branch_repo / "report" / "plots.html").read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"'](https?:|static/)", html)  # self-contained
    assert html.count("vegaEmbed(") >= 5 and "data:image/png;base64," in html
    assert '"rev": "HEAD~1"' in html.replace("'", '"') or "HEAD~1" in html


def test_reproduction_check_passes_and_reports_a_changed_metric(branch_repo):
    ok = tool(branch_repo, "tools.reproduction", "--no-repro")
    assert ok.returncode == 0 and "reproduction check passed" in ok.stdout, ok.stdout + ok.stderr
    path = branch_repo / "metrics" / "evaluate" / "alexnet" / "summary.json"
    original = path.read_text()
    tampered = json.loads(original)
    tampered["splits"]["test"]["metrics"]["macro_f1"]["value"] += 0.01
    tampered["pretrained"] = not tampered["pretrained"]
    tampered["model_fingerprint"] = "f" * 64
    path.write_text(json.dumps(tampered))
    run_record = branch_repo / "metrics" / "evaluate" / "alexnet" / "run.json"
    timed = run_record.read_text()
    record = json.loads(timed)
    record["timing"]["train_seconds"] += 100  # a timing: not a result
    run_record.write_text(json.dumps(record))
    try:
        bad = tool(branch_repo, "tools.reproduction", "--no-repro")
    finally:
        path.write_text(original)
        run_record.write_text(timed)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "2 of" in bad.stdout and "splits.test.metrics.macro_f1.value" in bad.stdout and "pretrained" in bad.stdout
    assert "train_seconds" not in bad.stdout


def test_queued_experiments_run_in_parallel_workers_and_both_show(branch_repo):
    """Parallel experiments are DVC's own: two queued learning rates, two queue workers."""
    import time

    for lr in ("0.01", "0.05"):
        run(branch_repo, "dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}")
    run(branch_repo, "dvc", "queue", "start", "-j", "2")
    deadline, status = time.monotonic() + 900, ""
    while time.monotonic() < deadline:
        status = run(branch_repo, "dvc", "queue", "status").stdout
        rows = [line.split() for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
        states = [row[-1] for row in rows if row and row[-1] in ("Queued", "Running", "Success", "Failed")]
        if len(states) == 2 and all(s in ("Success", "Failed") for s in states):
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    shown = json.loads(run(branch_repo, "dvc", "exp", "show", "--json").stdout)
    experiments = [exp for commit in shown for exp in commit.get("experiments") or []]
    lrs = sorted(e["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["lr"] for e in experiments)
    assert lrs == [0.01, 0.05], lrs
    for exp in experiments:
        metrics = exp["revs"][0]["data"]["metrics"]["metrics/headline.json"]["data"]["alexnet"]
        assert 0 <= metrics["acc_lo"] <= metrics["acc"] <= metrics["acc_hi"] <= 1
