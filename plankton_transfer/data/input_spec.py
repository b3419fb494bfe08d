"""What input a backbone expects: size, resampling, mean and std (no torch here, so the model
registry can be read by stages that never run a model)."""
from __future__ import annotations

import dataclasses

PREPROCESS_MODES = ("pad", "crop")  # extract.preprocess: letterbox, or the study's resize + centre crop
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a backbone expects its input (as timm's pretrained_cfg / torchvision's weights.transforms())."""

    input_size: int = 224
    resize_size: int = 256  # crop mode: shorter side resized to this, then centre-cropped to input_size
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
