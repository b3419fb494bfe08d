"""``extract``: the feature-extraction pass (what changes the features; how to run it, workers,
device and launcher, is in the environment: plankton_transfer/settings.py). ``tta``: test-time
augmentation, each validation and test row the mean of the features of the image's 8 dihedral
views (data/tta.py); the train rows stay single-view, so the head trains as without it."""
from __future__ import annotations

import dataclasses

from plankton_transfer.data.input_spec import PREPROCESS_MODES
from plankton_transfer.params.core import check_choice, check_range


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    preprocess: str = "pad"
    batch_size: int = 32
    dtype: str = "auto"
    decode: str = "auto"
    tta: bool = False

    def __post_init__(self) -> None:
        check_choice("extract.preprocess", self.preprocess, PREPROCESS_MODES)
        check_choice("extract.dtype", self.dtype, ("auto", "fp32", "bf16"))
        check_choice("extract.decode", self.decode, ("auto", "cpu", "device"))
        check_range("extract.batch_size", self.batch_size, 1, 65536)
