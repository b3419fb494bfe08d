"""Every registered backbone: builds, gives its feature size, and carries its preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from plankton_transfer.data.images import load_rgb
from plankton_transfer.data.preprocess import Normalize, border_colour, make_transform
from plankton_transfer.errors import UserError
from plankton_transfer.models.backbones import check_registered, get_backbone, registered_names
from plankton_transfer.models.feature_net import build_backbone, build_feature_network
from plankton_transfer.models.weights import ResolvedWeights, resolve_weights
from plankton_transfer.params.image import ImageParams
from plankton_transfer.params.pretrained import PretrainedParams
from tests.conftest import SAMPLE

RANDOM = ResolvedWeights(source="random-init")


def test_the_registry_lists_its_modules_and_each_module_registers_its_own_name():
    assert registered_names() == ["alexnet", "efficientnet_lite0", "vgg11"]  # _entries.py is a helper, not an entry
    for name in registered_names():
        assert get_backbone(name).name == name
    with pytest.raises(UserError, match="unknown backbone.*'_entries'"):
        check_registered(["_entries"])


@pytest.mark.parametrize("name", registered_names())
def test_forward_pass_gives_the_registered_feature_size(name):
    backbone = get_backbone(name)
    network = build_feature_network(name, RANDOM, seed=0)
    size = backbone.preprocess.input_size
    with torch.inference_mode():
        features = network(torch.randint(0, 255, (2, 3, size, size), dtype=torch.uint8))
    assert features.shape == (2, backbone.feature_dim)
    assert not network.training and not any(p.requires_grad for p in network.parameters())


@pytest.mark.parametrize("name", registered_names())
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_preprocessing_follows_the_backbone_config(name, mode):
    pre = get_backbone(name).preprocess
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 300, 3), dtype=np.uint8))
    x = make_transform(pre, mode)(img)
    assert x.dtype == torch.uint8 and x.shape == (3, pre.input_size, pre.input_size)
    normalised = Normalize(pre.mean, pre.std)(x.unsqueeze(0))[0]
    reference = v2.Normalize(pre.mean, pre.std)(x.float() / 255)
    assert torch.allclose(normalised, reference, atol=1e-5)


def test_random_init_is_reproducible_from_the_seed():
    a = build_backbone("alexnet", RANDOM, seed=3).features[0].weight
    b = build_backbone("alexnet", RANDOM, seed=3).features[0].weight
    c = build_backbone("alexnet", RANDOM, seed=4).features[0].weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pad_mode_keeps_a_long_organism_whole_and_pads_with_the_background():
    a = np.full((20, 200, 3), 230, dtype=np.uint8)
    a[8:12, 2:198] = 20  # a long dark diatom chain on a light background
    img = Image.fromarray(a)
    pre = get_backbone("alexnet").preprocess
    padded = make_transform(pre, "pad")(img).numpy()
    cropped = make_transform(pre, "crop")(img).numpy()
    row = padded[:, 112, :].min(axis=0)
    assert (row[5:219] < 100).all()  # the chain spans the whole width
    assert tuple(padded[:, 2, 112]) == border_colour(a) == (230, 230, 230)
    assert padded[:, 112, 0].min() > 200  # pad: both ends of the chain are inside the image
    assert (cropped[:, 112, :].max(axis=0) < 100).all()  # crop: the chain runs off both edges, ends cut


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(UserError, match="unknown backbone.* .resnet9.*alexnet"):
        get_backbone("resnet9")


def sample_features(name: str, weights: ResolvedWeights) -> tuple[np.ndarray, np.ndarray]:
    network = build_feature_network(name, weights, seed=0)
    transform = make_transform(get_backbone(name).preprocess, "pad")
    paths = sorted(p for p in SAMPLE.glob("*/*.jpg"))
    x = torch.stack([transform(load_rgb(p, ImageParams())) for p in paths])
    with torch.inference_mode():
        feats = network(x).numpy()
    return feats, np.array([p.parent.name for p in paths])


def test_imagenet_lite0_features_separate_the_real_sample_far_better_than_random():
    pretrained = resolve_weights("efficientnet_lite0", get_backbone("efficientnet_lite0").weights, PretrainedParams())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))  # scaled: converges in moments
    x, y = sample_features("efficientnet_lite0", pretrained)
    good = cross_val_score(probe, x, y, cv=5).mean()
    x_random, _ = sample_features("efficientnet_lite0", RANDOM)
    chance_level = cross_val_score(probe, x_random, y, cv=5).mean()
    assert good >= 0.75 and good > chance_level + 0.2, (good, chance_level)
