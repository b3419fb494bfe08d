"""The new last layer: one linear head, used everywhere a head is used.

Its :meth:`~LinearHead.logits` score features in evaluation, cross-validation, thresholds,
the open-set scores and prediction; its :meth:`~LinearHead.module` is the layer of the
exported network; models/heads.py trains it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy.special import softmax
from torch import nn


@dataclasses.dataclass(frozen=True)
class LinearHead:
    """A trained linear layer ``features -> class logits``: weight (C, D), bias (C,)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) logits of (N, D) feature rows, in float32."""
        return np.asarray(features, dtype=np.float32) @ self.weight.numpy().T + self.bias.numpy()

    def probabilities(self, features: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """Softmax of the logits divided by ``temperature`` (temperature scaling keeps the arg-max)."""
        return softmax(self.logits(features) / np.float32(temperature), axis=1)

    def module(self) -> nn.Linear:
        """The same head as a torch layer (for the exported network)."""
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        layer.load_state_dict({"weight": self.weight.float(), "bias": self.bias.float()})
        return layer

    @property
    def classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])
