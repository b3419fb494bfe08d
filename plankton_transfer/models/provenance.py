"""What a model's features were made from, as typed records: the backbone's weights, the input
recipe (preprocessing mode, the backbone's size/mean/std, how files are opened), the data and
split, and the features folder's ``meta.json`` (:class:`FeatureMeta`), written by the extract
stage and read by train, evaluate, crossval and the open-set stage.

The model file (models/model_file.py) carries the same records, so a model describes itself:
prediction, export and the model card never read them from the workspace.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.params.image import ImageParams
from plankton_transfer.records import Record


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """The backbone weights the features come from."""

    source: str  # "project folder" | "pip package <name>" | "random-init"
    pretrained: bool
    sha256: str  # of the weight file ("" for a random initialisation)
    file: str  # its name
    description: str  # for people: "ImageNet (pip package ...)" or "random init (NOT pretrained)"
    check: str  # how the sha256 was known
    init_seed: int  # the seed of a random initialisation (and of the head)


@dataclasses.dataclass(frozen=True)
class InputRecipe:
    """How an image file becomes the backbone's input: open (``image``), resize and pad or crop
    (``mode``, ``preprocess``), normalise (``preprocess.mean``/``std``)."""

    mode: str  # "pad" | "crop" (extract.preprocess)
    preprocess: Preprocess
    image: ImageParams = ImageParams()


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """Which images: the folder, the split's fingerprint and the counts of each class per split."""

    source: str  # data.raw
    split_sha256: str  # of (split, path, content hash) of every image: the same split, the same value
    class_counts: dict[str, dict[str, int]]  # split -> class -> images

    @property
    def sizes(self) -> dict[str, int]:
        return {split: sum(counts.values()) for split, counts in self.class_counts.items()}


@dataclasses.dataclass(frozen=True)
class FeatureMeta(Record):
    """A features folder's ``meta.json``."""

    FORMAT = "plankton-transfer/features"
    VERSION = 2  # 1: the untyped meta.json of plankton-transfer 0.2
    REMAKE = "run dvc repro (the extract stage writes it again)"

    backbone: str
    weights: WeightsInfo
    input: InputRecipe
    feature_dim: int
    backbone_parameters: int
    classes: tuple[str, ...]
    data: DataInfo
    seconds: float
    images_per_s: float | None
    decoded_on_device: int
    environment: dict[str, Any]
    tta: bool = False  # extract.tta: val and test rows are the mean of the image's 8 dihedral views

    @property
    def sizes(self) -> dict[str, int]:
        return self.data.sizes


def load_meta(folder: str | Path) -> FeatureMeta:
    """The features folder's meta.json."""
    return FeatureMeta.load_json(Path(folder) / "meta.json")
