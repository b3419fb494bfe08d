"""What the registry's entries have in common: torchvision and timm builders, how the last
layer is removed, and mapping a weight file laid out differently onto a model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import Backbone
from plankton_transfer.models.weights import WeightSpec

if TYPE_CHECKING:
    from torch import nn


def replace_last_classifier_layer(model: nn.Module) -> nn.Module:
    """torchvision AlexNet/VGG: drop ``classifier[6]`` (4096 -> 1000), keep fc7 + ReLU."""
    from torch import nn

    model.classifier[-1] = nn.Identity()
    return model


def remove_timm_classifier(model: nn.Module) -> nn.Module:
    model.reset_classifier(0)
    return model


def remap_by_position(state: dict, model: nn.Module) -> dict:
    """Map a state dict with other key names but the same tensors in the same order onto
    ``model``'s keys; every shape must match (the efficientnet-lite0 package vs timm)."""
    target = model.state_dict()
    src_keys, dst_keys = list(state), list(target)
    if len(src_keys) != len(dst_keys):
        raise UserError(f"weight file has {len(src_keys)} tensors, the model {len(dst_keys)}; wrong file for this model")
    remapped = {}
    for src, dst in zip(src_keys, dst_keys):
        if tuple(state[src].shape) != tuple(target[dst].shape):
            raise UserError(f"weight tensor {src} {tuple(state[src].shape)} does not fit {dst} {tuple(target[dst].shape)}")
        remapped[dst] = state[src]
    return remapped


def torchvision_builder(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, arch)(weights=None)

    return build


def timm_builder(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False)  # weights come from resolve_weights, never a hub

    return build


def numbered_blocks(convs: tuple[int, ...], fcs: tuple[int, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """torchvision AlexNet/VGG blocks: each convolution (``features[i]``) and each kept fully
    connected layer (``classifier[j]``), named conv1.., fc6, fc7 as in the papers."""
    return (tuple((f"conv{k}", (f"features.{i}",)) for k, i in enumerate(convs, start=1))
            + tuple((f"fc{k}", (f"classifier.{j}",)) for k, j in enumerate(fcs, start=6)))


def torchvision_classifier(name: str, weight_file: str, sha256: str | None = None,
                           blocks: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> Backbone:
    """An ImageNet classifier from torchvision whose last layer is ``classifier[6]`` (4096 -> 1000)."""
    return Backbone(
        name=name,
        build=torchvision_builder(name),
        strip_head=replace_last_classifier_layer,
        feature_dim=4096,
        preprocess=Preprocess(),  # torchvision's IMAGENET1K_V1 transforms: 256 -> 224, bilinear, ImageNet mean/std
        weights=WeightSpec(filename=weight_file, url=f"https://download.pytorch.org/models/{weight_file}",
                           sha256=sha256, licence="BSD-3-Clause (torchvision)"),
        blocks=blocks,
    )
