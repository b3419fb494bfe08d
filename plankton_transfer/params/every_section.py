"""Every section of params.yaml at once: ``read_params`` checks them all, so whichever stage runs
first stops a run with a bad setting before any work. It imports this module by name (see
params/core.py): the check only refuses, so the sections a stage does not read are not its
dependencies."""
from __future__ import annotations

from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import check_registered, get_backbone
from plankton_transfer.params.augment import AugmentParams
from plankton_transfer.params.base import BaseParams
from plankton_transfer.params.core import Params, named_source, section
from plankton_transfer.params.crossval import CrossvalParams
from plankton_transfer.params.data import DataParams
from plankton_transfer.params.ecotaxa import EcotaxaParams
from plankton_transfer.params.extract import ExtractParams
from plankton_transfer.params.filter import FilterParams
from plankton_transfer.params.finetune import FinetuneParams
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.openset import OpenSetParams
from plankton_transfer.params.pretrained import PretrainedParams
from plankton_transfer.params.split import SplitParams
from plankton_transfer.params.stats import StatsParams
from plankton_transfer.params.thresholds import ThresholdParams
from plankton_transfer.params.train import TrainParams

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
    "openset": OpenSetParams,
    "finetune": FinetuneParams,
    "augment": AugmentParams,
}
TOP_LEVEL_LISTS = ("models",)


def check_every_section(params: Params) -> None:
    """Unknown sections (a typo such as ``trian:``) and every section present, each checked."""
    with named_source(params):
        unknown = sorted(map(str, set(params) - set(SECTIONS) - set(TOP_LEVEL_LISTS)))
        if unknown:
            raise UserError(f"params.yaml: unknown section(s) {', '.join(unknown)}; known sections are "
                            f"{', '.join(sorted([*SECTIONS, *TOP_LEVEL_LISTS]))}")
    for name, cls in SECTIONS.items():
        if params.get(name) is not None:
            section(cls, params, name)
    if params.get("finetune") is not None:
        check_finetune(section(FinetuneParams, params, "finetune"), params)


def check_finetune(cfg: FinetuneParams, params: Params) -> None:
    """Every backbone to fine-tune is registered and has the blocks ``finetune.unfreeze`` asks
    for (the registry is read, no model is built)."""
    with named_source(params):
        try:
            check_registered(list(cfg.models))
        except UserError as err:
            raise UserError(f"params.yaml: finetune.models: {err}") from None
        for name in cfg.models:
            get_backbone(name).trainable_blocks(cfg.unfreeze)
