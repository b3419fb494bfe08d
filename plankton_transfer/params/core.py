"""Reading params.yaml: the file, its sections as checked dataclasses, and the messages.

Each section of params.yaml has its own module in this package (``params/train.py`` holds
``TrainParams``...), so a stage imports, and ``dvc.yaml`` lists as a dependency, only the
sections that stage reads: changing the stats options never re-runs feature extraction.
:func:`section` loads one section, rejecting unknown and mistyped keys with one line naming
the key, the value, what is allowed and the file it came from.

:func:`read_params` also checks every other section present (``params/every_section.py``), so
whichever stage runs first stops a run with a bad setting before any work. It imports that
module by name: a check that only refuses never changes what a stage computes, so the other
sections' modules are not the stage's dependencies (tools/architecture.py reads imports).

YAML: params.yaml is read as YAML 1.2 reads numbers, so ``1e-5`` is a number as DVC (ruamel)
writes it after ``dvc exp run -S train.lr=0.00001``, not the text PyYAML's YAML 1.1 makes of it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from plankton_transfer.errors import UserError

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # also safe inside a path
# settings that used to be params and now live in the environment (they say how to run, not what)
MOVED = {"filter.workers": "PLANKTON_WORKERS", "extract.workers": "PLANKTON_WORKERS",
         "extract.device": "PLANKTON_DEVICE", "extract.launcher": "PLANKTON_LAUNCHER",
         "extract.nproc": "PLANKTON_NPROC", "train.device": "PLANKTON_DEVICE",
         "train.features_on_device": "PLANKTON_FEATURES"}


class Params(dict):
    """params.yaml's sections, remembering the file they came from (for messages)."""

    source: str = str(PARAMS_FILE)


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-5`` and ``1E+30`` are numbers."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise UserError(f"params.yaml: {name} is {value!r}; choose one of {', '.join(map(str, choices))}")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` with ``low_open``), or a one-line error."""
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}" if isinstance(low, float) else
                          f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"<= {high:g}" if isinstance(high, float) else f"<= {high}")
        raise UserError(f"params.yaml: {name} is {value!r}; it must be {' and '.join(bounds)}")


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        try:
            return yaml.load(f, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"{path} is not valid YAML{where}; fix the file") from None


def read_params(path: str | Path = PARAMS_FILE) -> Params:
    """Load params.yaml (as a mapping of sections; each stage checks the sections it reads)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} not found; run from the project root or pass --params")
    params = load_yaml(path) or {}
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections, not {type(params).__name__}")
    loaded = Params(params)
    loaded.source = str(path)
    if "models" in loaded:
        with named_source(loaded):
            check_model_names(loaded["models"])
    importlib.import_module("plankton_transfer.params.every_section").check_every_section(loaded)
    return loaded


def check_model_names(models: Any) -> list[str]:
    """``models``: a list of distinct model names (letters, digits, ``_.-``); empty only where allowed."""
    if not isinstance(models, list) or not models:
        raise UserError(f"params.yaml: models is {models!r}; give a non-empty list of backbone names, e.g. [alexnet]")
    for name in models:
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise UserError(f"params.yaml: models holds {name!r}; a backbone name has only letters, digits and _.-")
    duplicates = sorted({n for n in models if models.count(n) > 1})
    if duplicates:
        raise UserError(f"params.yaml: models lists {', '.join(duplicates)} more than once; list each backbone once")
    return list(models)


class named_source:
    """Within the block, a UserError starting ``params.yaml:`` names the file the params came from."""

    def __init__(self, params: dict) -> None:
        self.source = getattr(params, "source", str(PARAMS_FILE))

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if isinstance(err, UserError) and self.source != str(PARAMS_FILE) and str(err).startswith("params.yaml"):
            raise UserError(self.source + str(err).removeprefix("params.yaml")) from None
        return False


def section(cls: type[T], params: dict[str, Any], name: str) -> T:
    """Build the dataclass ``cls`` from ``params[name]``, checking every key's type.

    A misspelt key (``train.lrr``) or a mistyped value (``train.lr: abc``) fails here, before
    any work, instead of being ignored or failing later.
    """
    with named_source(params):
        values = params.get(name)
        if values is None:
            raise UserError(f"params.yaml has no '{name}' section; copy it from the project's params.yaml")
        if not isinstance(values, dict):
            raise UserError(f"params.yaml: '{name}' must be a mapping of settings, not {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(map(str, set(values) - set(fields)))
        if unknown:
            moved = [f"{name}.{k} is now the environment variable {MOVED[f'{name}.{k}']} (docs/running.md)"
                     for k in unknown if f"{name}.{k}" in MOVED]
            raise UserError(
                f"params.yaml: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                + ("; ".join(moved) if moved else f"known keys are {', '.join(sorted(fields))}")
            )
        hints = typing.get_type_hints(cls)
        checked = {key: coerce(f"{name}.{key}", value, hints[key]) for key, value in values.items()}
        return cls(**checked)


def describe(hint: Any) -> str:
    """A type in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {int: "a whole number", float: "a finite number", bool: "true or false", str: "a text value",
            type(None): "null"}.get(hint, str(hint))


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint`` (lists become tuples), or a one-line error."""
    try:
        return convert(value, hint)
    except (TypeError, ValueError):
        example = " (e.g. [copepod])" if typing.get_origin(hint) is tuple and isinstance(value, str) else ""
        raise UserError(f"params.yaml: {key} is {value!r}; it must be {describe(hint)}{example}") from None


def convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return convert(value, option)
            except (TypeError, ValueError):
                continue
        raise TypeError(value)
    if hint is type(None):
        if value is None:
            return None
        raise TypeError(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(value)
        return tuple(convert(v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    raise TypeError(f"unsupported params type {hint}")  # a new dataclass field type: extend convert()


def params_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--params`` option every stage and command shares."""
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="the pipeline's params file")
