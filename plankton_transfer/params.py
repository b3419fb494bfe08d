"""params.yaml: one dataclass per section, checked before any work is done.

params.yaml is the source of truth for every setting; the defaults below mirror it (a test,
tests/test_architecture.py, fails when they drift apart) so the library can also be used
without a params file. Each stage loads only its sections with :func:`section`, which
rejects unknown and mistyped keys with one line naming the key, the value and what is
allowed; :func:`read_params` rejects unknown top-level sections (a typo such as ``trian:``),
checks the ``models`` list and every section present, so whichever stage runs first stops
a run with a bad setting before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
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
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # also safe inside a shell command and a path
PREPROCESS_MODES = ("pad", "crop")
LAUNCHERS = ("none", "torchrun", "slurm")  # how the extract stage runs: plankton_transfer/launch.py


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
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"<= {high}")
        raise UserError(f"params.yaml: {name} is {value!r}; it must be {' and '.join(bounds)}")


@dataclasses.dataclass(frozen=True)
class BaseParams:
    """``base``: shared by every stage."""

    seed: int = 42


@dataclasses.dataclass(frozen=True)
class DataParams:
    """``data``."""

    raw: str = "data/flowcam-sample"

    def __post_init__(self) -> None:
        if not self.raw.strip():
            raise UserError("params.yaml: data.raw is empty; set it to your image folder")


@dataclasses.dataclass(frozen=True)
class FilterParams:
    """``filter``: which classes and files the filter stage keeps."""

    min_images_per_class: int = 10
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_per_class: int | None = None
    strict: bool = False
    label_conflicts: str = "drop"
    workers: int = 0

    def __post_init__(self) -> None:
        check_choice("filter.label_conflicts", self.label_conflicts, ("drop", "error"))
        check_range("filter.min_images_per_class", self.min_images_per_class, 1)
        if self.max_per_class is not None:
            check_range("filter.max_per_class", self.max_per_class, 1)
        check_range("filter.workers", self.workers, 0)


@dataclasses.dataclass(frozen=True)
class ImageParams:
    """``image``: how image files are validated and opened (shared by filter and extract)."""

    max_pixels: int = 50_000_000
    min_side: int = 4
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        check_range("image.max_pixels", self.max_pixels, 1)
        check_range("image.min_side", self.min_side, 1)
        if not all(0 <= v <= 255 for v in self.background):
            raise UserError(f"params.yaml: image.background is {list(self.background)}; use three integers 0-255")


SPLIT_GROUP_MODES = ("none", "near_duplicates")  # or a regular expression with a capture group


@dataclasses.dataclass(frozen=True)
class SplitParams:
    """``split``: fractions of each class in train, val and test, and what must stay together."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    group: str = "none"
    near_duplicate_distance: int = 4

    def __post_init__(self) -> None:
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise UserError(
                f"params.yaml: split fractions must be > 0 and sum to 1 (got train={self.train}, "
                f"val={self.val}, test={self.test})"
            )
        check_range("split.near_duplicate_distance", self.near_duplicate_distance, 0, 32)
        if self.group not in SPLIT_GROUP_MODES:
            check_group_pattern(self.group)


def check_group_pattern(pattern: str) -> re.Pattern:
    """``split.group`` as a regular expression whose first capture group is the group id."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise UserError(f"params.yaml: split.group {pattern!r} is not a regular expression ({err}); use none, "
                        "near_duplicates or a pattern such as '(D\\d{8}T\\d{6}_IFCB\\d+)'") from None
    if compiled.groups < 1:
        raise UserError(f"params.yaml: split.group {pattern!r} has no capture group; put the group id in "
                        "parentheses, e.g. '^([^_]+)_' for the part of the file name before the first _")
    return compiled


@dataclasses.dataclass(frozen=True)
class PretrainedParams:
    """``pretrained``: where the extract stage finds ImageNet weights (never the network)."""

    on_missing: str = "random"
    dir: str = "data/pretrained"

    def __post_init__(self) -> None:
        check_choice("pretrained.on_missing", self.on_missing, ("random", "error"))
        if not self.dir.strip():
            raise UserError("params.yaml: pretrained.dir is empty; the default is data/pretrained")


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    """``extract``: the feature-extraction pass."""

    preprocess: str = "pad"
    batch_size: int = 32
    workers: int = -1
    device: str = "auto"
    dtype: str = "auto"
    decode: str = "auto"
    launcher: str = "none"
    nproc: int = 0

    def __post_init__(self) -> None:
        check_choice("extract.launcher", self.launcher, LAUNCHERS)
        check_range("extract.nproc", self.nproc, 0)
        check_choice("extract.preprocess", self.preprocess, PREPROCESS_MODES)
        check_choice("extract.dtype", self.dtype, ("auto", "fp32", "bf16"))
        check_choice("extract.decode", self.decode, ("auto", "cpu", "device"))
        check_range("extract.batch_size", self.batch_size, 1)
        check_range("extract.workers", self.workers, -1)


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """``train``: the head's training protocol (the study's by default)."""

    lr: float | tuple[float, ...] = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 24
    max_epochs: int = 100
    patience: int = 20
    device: str = "auto"
    features_on_device: str = "auto"

    @property
    def lrs(self) -> list[float]:
        return [float(v) for v in (self.lr if isinstance(self.lr, tuple) else (self.lr,))]

    def __post_init__(self) -> None:
        if not self.lrs:
            raise UserError("params.yaml: train.lr is an empty list; give a number or a list of numbers")
        for lr in self.lrs:
            check_range("train.lr", lr, 0, low_open=True)
        check_range("train.momentum", self.momentum, 0, 1)
        check_range("train.weight_decay", self.weight_decay, 0)
        check_range("train.batch_size", self.batch_size, 1)
        check_range("train.max_epochs", self.max_epochs, 1)
        check_range("train.patience", self.patience, 1)
        check_choice("train.features_on_device", self.features_on_device, ("auto", "resident", "stream"))


ECOTAXA_CATEGORY_COLUMNS = ("object_annotation_category", "object_annotation_hierarchy")
ECOTAXA_STATUSES = ("validated", "predicted", "dubious")  # EcoTaxa's annotation statuses


@dataclasses.dataclass(frozen=True)
class EcotaxaParams:
    """``ecotaxa``: how the filter stage reads ``data.raw`` when it is an unzipped EcoTaxa export."""

    category: str = "object_annotation_category"
    mapping: str | None = None
    statuses: tuple[str, ...] = ("validated",)

    def __post_init__(self) -> None:
        check_choice("ecotaxa.category", self.category, ECOTAXA_CATEGORY_COLUMNS)
        if not self.statuses:
            raise UserError("params.yaml: ecotaxa.statuses is empty; list the statuses to train on, e.g. [validated]")
        for status in self.statuses:
            check_choice("ecotaxa.statuses", status, ECOTAXA_STATUSES)
        if self.mapping is not None and not self.mapping.strip():
            raise UserError("params.yaml: ecotaxa.mapping is empty; give a CSV file name or null")


@dataclasses.dataclass(frozen=True)
class ThresholdParams:
    """``thresholds``: the per-class probability thresholds the train stage stores in each model file."""

    target_precision: float = 0.95

    def __post_init__(self) -> None:
        check_range("thresholds.target_precision", self.target_precision, 0, 1, low_open=True)


@dataclasses.dataclass(frozen=True)
class StatsParams:
    """``stats``: how uncertainty and calibration are reported (evaluate, crossval, compare)."""

    confidence: float = 0.95
    interval_method: str = "posterior"
    resamples: int = 2000
    calibration_bins: int = 15

    def __post_init__(self) -> None:
        check_choice("stats.interval_method", self.interval_method, ("posterior", "bootstrap"))
        check_range("stats.confidence", self.confidence, 0, 1, low_open=True)
        if self.confidence >= 1:
            raise UserError(f"params.yaml: stats.confidence is {self.confidence}; it must be below 1, e.g. 0.95")
        check_range("stats.resamples", self.resamples, 100)
        check_range("stats.calibration_bins", self.calibration_bins, 1)


@dataclasses.dataclass(frozen=True)
class CrossvalParams:
    """``crossval``: repeated stratified k-fold over all filtered images, on the cached features."""

    folds: int = 5
    repeats: int = 2
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_range("crossval.folds", self.folds, 2)
        check_range("crossval.repeats", self.repeats, 1)
        check_range("crossval.val_fraction", self.val_fraction, 0, 0.5, low_open=True)


# params.yaml's sections and the dataclass that reads each; ``models`` is a plain list.
SECTIONS: dict[str, type] = {
    "base": BaseParams,
    "data": DataParams,
    "filter": FilterParams,
    "image": ImageParams,
    "split": SplitParams,
    "pretrained": PretrainedParams,
    "extract": ExtractParams,
    "train": TrainParams,
    "ecotaxa": EcotaxaParams,
    "thresholds": ThresholdParams,


    "stats": StatsParams,
    "crossval": CrossvalParams,
}
TOP_LEVEL_LISTS = ("models",)


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Load params.yaml; unknown sections and a bad ``models`` list are errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} not found; run from the project root or pass --params")
    with path.open(encoding="utf-8") as f:
        try:
            params = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"{path} is not valid YAML{where}; fix the file") from None
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections, not {type(params).__name__}")
    unknown = sorted(map(str, set(params) - set(SECTIONS) - set(TOP_LEVEL_LISTS)))
    if unknown:
        raise UserError(f"{path}: unknown section(s) {', '.join(unknown)}; known sections are "
                        f"{', '.join(sorted([*SECTIONS, *TOP_LEVEL_LISTS]))}")
    if "models" in params:
        check_model_names(params["models"])
    for name, cls in SECTIONS.items():  # every section, not only the caller's: a run whose first
        if params.get(name) is not None:  # stage is the filter stops there, not after hours of work
            section(cls, params, name)
    return params


def check_model_names(models: Any) -> list[str]:
    """``models``: a non-empty list of distinct backbone names (letters, digits, ``_.-``)."""
    if not isinstance(models, list) or not models:
        raise UserError(f"params.yaml: models is {models!r}; give a non-empty list of backbone names, e.g. [alexnet]")
    for name in models:
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise UserError(f"params.yaml: models holds {name!r}; a backbone name has only letters, digits and _.-")
    duplicates = sorted({n for n in models if models.count(n) > 1})
    if duplicates:
        raise UserError(f"params.yaml: models lists {', '.join(duplicates)} more than once; list each backbone once")
    return list(models)


def section(cls: type[T], params: dict[str, Any], name: str) -> T:
    """Build the dataclass ``cls`` from ``params[name]``, checking every key's type.

    A misspelt key (``train.lrr``) or a mistyped value (``train.lr: abc``) fails here, before
    any work, instead of being ignored or failing later.
    """
    values = params.get(name)
    if values is None:
        raise UserError(f"params.yaml has no '{name}' section; copy it from the project's params.yaml")
    if not isinstance(values, dict):
        raise UserError(f"params.yaml: '{name}' must be a mapping of settings, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(map(str, set(values) - set(fields)))
    if unknown:
        raise UserError(
            f"params.yaml: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"known keys are {', '.join(sorted(fields))}"
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
