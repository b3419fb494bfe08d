"""The one path from preprocessed images to features: normalise, frozen backbone, dtype.

The extract stage, ``plankton-predict`` and ``plankton-export`` all build their network with
:func:`build_feature_network` (or :func:`network_for` from a model file) and run images
through :class:`FeatureExtractor` (extract, predict) or :class:`FeatureNetwork` itself (the
exported graph), so an image gets the same features everywhere:

- input: uint8 RGB (N, 3, S, S), preprocessed on the CPU (data/preprocess.py);
- :class:`~plankton_transfer.data.preprocess.Normalize`: scaled to 0..1 and normalised with
  the backbone's mean and std, on the device;
- the backbone in channels_last layout (faster for these convnets on CUDA and CPU alike),
  under bf16 autocast on CUDA (``extract.dtype: auto``), float32 on the CPU;
- features kept as float16, as the feature store holds them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.data.preprocess import Normalize
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import get_backbone
from plankton_transfer.models.torch_files import load_tensor_file
from plankton_transfer.models.weights import RANDOM_INIT, ResolvedWeights, resolve_weights
from plankton_transfer.params.pretrained import PretrainedParams


class FeatureNetwork(nn.Module):
    """uint8 images (N, 3, S, S) -> features (N, D): normalisation, then the frozen backbone."""

    def __init__(self, backbone: nn.Module, pre: Preprocess) -> None:
        super().__init__()
        self.backbone, self.normalize = backbone, Normalize(pre.mean, pre.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(images))


def build_backbone(name: str, weights: ResolvedWeights, seed: int = 0,
                   state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Backbone ``name`` in eval mode with its last layer removed: loaded with ``weights`` (a
    random initialisation, seeded, when not pretrained), then with a fine-tuned ``state`` when given."""
    backbone = get_backbone(name)
    torch.manual_seed(seed)
    model = backbone.build()
    if weights.pretrained:
        model.load_state_dict(backbone.remap(load_tensor_file(weights.path), model), strict=True)
    model = backbone.strip_head(model)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def build_feature_network(name: str, weights: ResolvedWeights, seed: int = 0,
                          state: dict[str, torch.Tensor] | None = None) -> FeatureNetwork:
    return FeatureNetwork(build_backbone(name, weights, seed, state), get_backbone(name).preprocess).eval()


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """``extract.dtype``: bf16 autocast on CUDA with ``auto``; float32 on the CPU."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class FeatureExtractor:
    """Batches of preprocessed uint8 images -> float16 feature rows, on ``device``.

    The normalised batch is written into one channels_last float buffer reused from batch to
    batch (the same values as ``Normalize``; four allocations of the batch's size fewer per
    batch, which keeps the extract stage's memory flat)."""

    def __init__(self, network: FeatureNetwork, device: torch.device, dtype: torch.dtype | None) -> None:
        self.network = network.to(device).to(memory_format=torch.channels_last)
        self.device, self.dtype, self.buffer = device, dtype, None

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        if self.buffer is None or self.buffer.shape[1:] != images.shape[1:] or len(self.buffer) < len(images):
            self.buffer = torch.empty(images.shape, dtype=torch.float32, device=self.device,
                                      memory_format=torch.channels_last)
        x = self.buffer[:len(images)]
        x.copy_(images)  # uint8 -> float32 and NCHW -> NHWC in one pass
        normalize = self.network.normalize
        return x.mul_(normalize.scale).sub_(normalize.shift)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = self.normalized(images.to(self.device, non_blocking=True))
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            features = self.network.backbone(x)
        return features.float().cpu().numpy().astype(np.float16)


def model_weights(model, cfg: PretrainedParams) -> ResolvedWeights:
    """The weight file a model file's backbone was built with, found again and checked by sha256."""
    recorded = model.weights
    if not recorded.pretrained:
        return ResolvedWeights(source=RANDOM_INIT)
    weights = resolve_weights(model.backbone, get_backbone(model.backbone).weights,
                              PretrainedParams(on_missing="error", dir=cfg.dir))
    if weights.sha256 != recorded.sha256:
        raise UserError(f"{weights.path} is not the weight file this model was trained with "
                        f"(sha256 {recorded.sha256[:16]}...); put that file in {cfg.dir}/{model.backbone}/")
    return weights


def network_for(model, cfg: PretrainedParams) -> FeatureNetwork:
    """The exact feature network a model file's head was trained on (its fine-tuned backbone too)."""
    if model.backbone_state is not None:
        return build_feature_network(model.backbone, ResolvedWeights(source=RANDOM_INIT), model.weights.init_seed,
                                     model.backbone_state)
    return build_feature_network(model.backbone, model_weights(model, cfg), model.weights.init_seed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
