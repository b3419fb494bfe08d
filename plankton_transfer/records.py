"""Typed records: what one stage hands another, with one way to and from files.

Each record is a frozen dataclass; the ones saved as files (the model file, the features'
meta, the evaluation summary, the filter report, the run record) derive from
:class:`Record`, which adds a format name and a version and is the only code that turns them
into plain dicts and back. Reading checks every field: a key that nothing writes, or one that
is missing, fails at once with one line naming the file, instead of showing as an empty cell
later. A file written by an older format version is upgraded when its record knows how
(``UPGRADES``), otherwise refused with one line saying how to make it again.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from plankton_transfer.errors import UserError
from plankton_transfer.files import read_json, write_json

R = TypeVar("R", bound="Record")


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of the records saved as files (a dataclass with a format name and a version)."""

    FORMAT: ClassVar[str] = ""  # e.g. "plankton-transfer/features-meta"
    VERSION: ClassVar[int] = 1
    REMAKE: ClassVar[str] = "run dvc repro to write it again"  # how a user gets a current file
    UPGRADES: ClassVar[dict[int, Callable[[dict], dict]]] = {}  # version -> the same data one version later

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "version": self.VERSION, **plain(self)}

    @classmethod
    def from_dict(cls: type[R], data: Any, source: str | Path) -> R:
        """The record ``data`` holds, after checking its format, version and fields."""
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{source} is not a {cls.FORMAT} file (format {found!r}); {cls.REMAKE}")
        data = upgraded(cls, dict(data), source)
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        return build(cls, body, str(source))

    def save_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load_json(cls: type[R], path: str | Path) -> R:
        return cls.from_dict(read_json(path), path)


def upgraded(cls: type[Record], data: dict, source: str | Path) -> dict:
    """``data`` brought to ``cls.VERSION`` through the record's upgrades, or a one-line refusal."""
    version = data.get("version", 0)
    if not isinstance(version, int) or version > cls.VERSION:
        raise UserError(f"{source} was written by a newer plankton-transfer ({cls.FORMAT} version {version}); "
                        "update plankton-transfer to read it")
    while version < cls.VERSION:
        if version not in cls.UPGRADES:
            raise UserError(f"{source} was written by an older plankton-transfer ({cls.FORMAT} version {version}, "
                            f"this one reads version {cls.VERSION}); {cls.REMAKE}")
        data = cls.UPGRADES[version](data)
        version += 1
    return data


def plain(obj: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, all the way down (tensors and arrays as they are)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def build(cls: type, data: Any, source: str, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data``: every field present, none unknown; nested
    dataclasses (also inside ``X | None``) built the same way, lists of them too."""
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise UserError(f"{source}: {name} is {type(data).__name__}, not a mapping; the file is damaged or not "
                        "one this version writes")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    missing = sorted(n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
        problem = "; ".join(filter(None, [f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                                          f"missing field(s) {', '.join(missing)}" if missing else ""]))
        raise UserError(f"{source}: {name} has {problem}; the file is damaged or was written by another version")
    hints = typing.get_type_hints(cls)
    values = {key: convert(hints[key], value, source, f"{name}.{key}") for key, value in data.items()}
    return cls(**values)


def convert(hint: Any, value: Any, source: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(inner[0], value, source, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, source, where) for v in value)
        return tuple(value)
    if origin is list and isinstance(value, list) and args and dataclasses.is_dataclass(args[0]):
        return [build(args[0], v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict) and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {k: build(args[1], v, source, f"{where}[{k!r}]") for k, v in value.items()}
    return value
