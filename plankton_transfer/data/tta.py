"""Test-time augmentation: the 8 dihedral views of an image and the mean of their features.

Used by the extract stage (``extract.tta``: the validation and test rows) and by
``plankton-predict --tta``. The views are the rotations by 90 degrees and their mirror
images: exact transforms of the preprocessed square image (data/preprocess.py), which lose
nothing and need no filling. Kept apart from the training augmentation (data/augment.py), so
extraction depends on this module only.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations by 90 degrees and their mirror images of square (N, 3, S, S) images."""
    views = []
    for k in range(4):
        turned = torch.rot90(images, k, dims=(2, 3))
        views += [turned, turned.flip(-1)]
    return views


def mean_of_views(features: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor) -> np.ndarray:
    """Test-time augmentation: the mean of ``features`` over the 8 dihedral views, as float16 rows
    (as the feature store keeps them). For the linear head, averaging features is averaging
    logits: the head and its temperature then apply unchanged."""
    total = None
    for view in dihedral_views(images):
        rows = np.asarray(features(view), dtype=np.float32)
        total = rows if total is None else total + rows
    return (total / 8).astype(np.float16)
