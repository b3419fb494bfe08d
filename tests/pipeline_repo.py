"""A temporary git + DVC copy of this project, for end-to-end tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, project_params

PROJECT_FILES = ["dvc.yaml", ".gitignore", "pyproject.toml"]


def command_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "test",
                "GIT_COMMITTER_EMAIL": "t@example.org", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=repo, env=command_env(env), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_repo(repo: Path, **param_sections) -> Path:
    """Copy the pipeline (code, dvc.yaml, params) into ``repo``, git init, dvc init, commit."""
    repo.mkdir(parents=True, exist_ok=True)
    for package in ("plankton_transfer", "stages", "tools"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in PROJECT_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    # the weight folders as git has them (READMEs), never weight files a developer fetched
    shutil.copytree(ROOT / "data" / "pretrained", repo / "data" / "pretrained", dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if not Path(folder, n).is_dir()
                                                  and n not in ("README.md", "SHA256SUMS")])
    (repo / "params.yaml").write_text(yaml.safe_dump(project_params(**param_sections), sort_keys=False))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # offline page, confusion template
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    commit(repo, "initial")
    return repo


def commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "--allow-empty", "-m", message)


def stages_run(output: str) -> list[str]:
    """Names of the stages that a dvc command ran, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def make_small_repo(repo: Path) -> Path:
    """Three synthetic classes of 8 images, AlexNet only, 15 epochs, 2-fold cross-validation: the
    quickest full pipeline."""
    from tests.conftest import make_dataset

    make_dataset(repo / "data" / "raw", {"a": 8, "b": 8, "c": 8})
    return make_repo(repo, models=["alexnet"], data={"raw": "data/raw"},
                     filter={"min_images_per_class": 3}, extract={"batch_size": 8},
                     train={"max_epochs": 15}, crossval={"folds": 2, "repeats": 1},
                     openset={"repeats": 2, "resamples": 200})
