"""The backbone registry: one module per backbone in this package, named like the backbone
(``alexnet.py`` holds AlexNet's entry as ``BACKBONE``), each building its model, naming its
official weights and carrying its own preprocessing and feature size (as timm's registry).

One module per backbone keeps each ``extract@<backbone>`` stage depending on its own entry
only: registering a new backbone (a new module here, plus a folder
``data/pretrained/<name>/`` for its weight file) re-runs no other backbone's extraction.
Helpers shared by the entries live in ``_entries.py``. ``params.yaml: models`` picks which
entries run. Reading the registry imports no torch.

Each entry also names its **blocks**: the top-level trainable parts of the stripped network,
input to output, each a name and the module paths it holds. The fine-tuning stage trains the
last N of them (``finetune.unfreeze``), so what "the last 2 blocks" means is decided here, per
backbone, and checked against ``params.yaml`` before any model is built.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from typing import TYPE_CHECKING, Callable

from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.errors import UserError
from plankton_transfer.models.weights import WeightSpec

if TYPE_CHECKING:  # torch is imported where a model is built, so reading the registry stays cheap
    from torch import nn

ENTRY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a backbone's name is its module's name


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]  # the ImageNet architecture, randomly initialised
    strip_head: Callable[[nn.Module], nn.Module]  # removes the last layer in place, returns the model
    feature_dim: int
    preprocess: Preprocess
    weights: WeightSpec | None
    remap: Callable[[dict, nn.Module], dict] = lambda state, model: state  # official layout -> model's
    # (name, module paths in the stripped model) per block, input to output; together they hold every parameter
    blocks: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.blocks)

    def trainable_blocks(self, unfreeze: str | int) -> tuple[str, ...]:
        """The blocks ``finetune.unfreeze`` trains: none (``head``), every one (``all``), the last
        N (a number) or a named block and every block after it; a one-line error otherwise."""
        names = self.block_names
        if unfreeze == "head":
            return ()
        if not names:
            raise UserError(f"params.yaml: finetune.unfreeze is {unfreeze!r}, but {self.name}'s registry entry names "
                            "no blocks; use head, or add its blocks to its module in plankton_transfer/models/backbones/")
        if unfreeze == "all":
            return names
        if isinstance(unfreeze, int):
            if not 1 <= unfreeze <= len(names):
                raise UserError(f"params.yaml: finetune.unfreeze is {unfreeze}, but {self.name} has {len(names)} "
                                f"blocks ({', '.join(names)}); use 1-{len(names)}, all or head")
            return names[len(names) - unfreeze:]
        if unfreeze not in names:
            raise UserError(f"params.yaml: finetune.unfreeze is {unfreeze!r}, which is not a block of {self.name}; "
                            f"use head, all, a number of last blocks (1-{len(names)}) or a block: {', '.join(names)}")
        return names[names.index(unfreeze):]


def registered_names() -> list[str]:
    """Every backbone of the registry (its modules; nothing is imported)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if ENTRY_NAME.match(m.name))


def unknown_message(names: list[str]) -> str:
    return (f"unknown backbone(s) {', '.join(map(repr, names))}; choose from {', '.join(registered_names())} "
            "(or add a module for it to plankton_transfer/models/backbones/)")


def check_registered(names: list[str]) -> list[str]:
    """Every name is a registered backbone, or a one-line error."""
    unknown = [n for n in names if n not in registered_names()]
    if unknown:
        raise UserError(unknown_message(unknown))
    return names


def get_backbone(name: str) -> Backbone:
    """The registry entry of backbone ``name`` (its module's ``BACKBONE``)."""
    if not isinstance(name, str) or name not in registered_names():
        raise UserError(unknown_message([name]))
    entry = importlib.import_module(f"{__name__}.{name}").BACKBONE
    assert entry.name == name, f"{name}.py registers {entry.name}: a backbone's module is named like it"
    return entry
