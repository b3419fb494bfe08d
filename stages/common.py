"""Shared helpers for every stage: user errors, params sections, atomic output files.

Kept free of torch so the data stages (filter, split) start fast.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import yaml

T = TypeVar("T")
PARAMS_FILE = "params.yaml"


class UserError(Exception):
    """A problem the user can fix (bad params, bad files, missing weights).

    Stages print it as one line, without a traceback, and exit with status 2.
    """


def run_cli(main: Callable[[list[str] | None], Any]) -> None:
    """Run a stage's ``main`` and turn a :class:`UserError` into a one-line message."""
    try:
        main(None)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


@dataclasses.dataclass(frozen=True)
class BaseParams:
    """The ``base`` section, shared by every stage."""

    seed: int = 42


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} not found; run from the project root or pass --params")
    with path.open(encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections, not {type(params).__name__}")
    return params


def section(cls: type[T], params: dict[str, Any], name: str) -> T:
    """Build the dataclass ``cls`` from ``params[name]``, rejecting unknown keys.

    A misspelt key (``train.lrr``) fails instead of being silently ignored.
    """
    values = params.get(name)
    if values is None:
        raise UserError(f"params.yaml has no '{name}' section; copy it from the project's params.yaml")
    if not isinstance(values, dict):
        raise UserError(f"params.yaml: '{name}' must be a mapping of settings")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"params.yaml: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"known keys are {', '.join(sorted(known))}"
        )
    try:
        return cls(**values)
    except TypeError as err:  # a required key is missing
        raise UserError(f"params.yaml: section '{name}': {err}") from None


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise UserError(f"params.yaml: {name} is {value!r}; choose one of {', '.join(map(str, choices))}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    A run killed at any moment leaves either the old file or the new one, never half
    of one. Works for files and for directories.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        kill_here_for_tests(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def kill_here_for_tests(path: Path) -> None:
    """Fault injection for tests/test_interrupt.py: with PLANKTON_KILL_BEFORE=<file name>,
    SIGKILL the whole run (this process group, dvc included) just before that output is
    renamed into place: the worst moment for a run to die."""
    if os.environ.get("PLANKTON_KILL_BEFORE") == path.name:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; run the stage that writes it first (dvc repro)")
    with path.open(encoding="utf-8") as f:
        return json.load(f)
