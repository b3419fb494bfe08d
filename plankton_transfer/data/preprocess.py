"""Image preprocessing as a backbone expects it (:class:`~plankton_transfer.data.input_spec.Preprocess`,
carried by each registry entry), and its description for consumers of an exported model.

Two modes (``extract.preprocess``):
- ``crop``: the study's Resize(256) + CenterCrop(224) (sizes from the backbone);
- ``pad``: letterbox: resize to fit the input square keeping the aspect ratio, and pad with
  the image's border colour, so long, thin organisms are not cut off and the padding matches
  the background (light for FlowCam/ZooScan, dark for dark-field).

The letterbox geometry and padding colour are written once (data/letterbox.py) and used by the
Pillow path (CPU workers), the tensor path (images decoded on the GPU) and the near-duplicate
check alike. :func:`describe_preprocessing`
states every step for someone who has only the exported ONNX file, numpy and Pillow.

The CPU side (DataLoader workers) produces uint8 CHW tensors: a quarter of the bytes of
float32 to move to the device. :class:`Normalize` scales and normalises on the device.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from plankton_transfer.data.images import BadImage
from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.data.letterbox import border_colour, letterbox_geometry, letterbox_image
from plankton_transfer.params.core import check_choice
from plankton_transfer.data.input_spec import PREPROCESS_MODES as MODES
from plankton_transfer.params.image import ImageParams

PIL_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
TV_INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def make_transform(pre: Preprocess, mode: str, image_cfg: ImageParams = ImageParams()
                   ) -> Callable[[Image.Image], torch.Tensor]:
    """A picklable function from an RGB PIL image to a uint8 (3, S, S) tensor."""
    check_choice("extract.preprocess", mode, MODES)
    if mode == "crop":
        return CentreCrop(pre, image_cfg.max_pixels)
    return Letterbox(pre.input_size, pre.interpolation)


class Letterbox:
    """Resize to fit a ``size`` square, keeping the aspect ratio, and pad with the border colour
    (data/letterbox.py), as a uint8 (3, S, S) tensor."""

    def __init__(self, size: int, interpolation: str) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        padded = letterbox_image(img, self.size, PIL_INTERPOLATION[self.interpolation])
        return torch.from_numpy(np.asarray(padded).copy()).permute(2, 0, 1)


def crop_resize_size(width: int, height: int, short: int) -> tuple[int, int]:
    """torchvision's Resize(short) on an image: the shorter side becomes ``short``, the longer
    ``int(short * longer / shorter)`` (truncated)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_fits(width: int, height: int, pre: Preprocess, max_pixels: int) -> bool:
    """Crop mode can resize a ``width`` x ``height`` image within ``max_pixels`` (:class:`CentreCrop`)."""
    w, h = crop_resize_size(width, height, pre.resize_size)
    return w * h <= max_pixels


class CentreCrop:
    """Resize the shorter side to ``resize_size``, then take the centre ``input_size`` square.

    An image so elongated that the resized image would exceed ``image.max_pixels`` (a 60000 x 4
    strip becomes 3,840,000 x 256 pixels, gigabytes) is refused before resizing."""

    def __init__(self, pre: Preprocess, max_pixels: int) -> None:
        self.pre, self.max_pixels = pre, max_pixels
        self.transform = v2.Compose([
            v2.Resize(pre.resize_size, interpolation=TV_INTERPOLATION[pre.interpolation], antialias=True),
            v2.CenterCrop(pre.input_size),
            v2.PILToTensor(),
        ])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not crop_fits(img.width, img.height, self.pre, self.max_pixels):
            w, h = crop_resize_size(img.width, img.height, self.pre.resize_size)
            raise BadImage("too elongated for crop mode",
                           f"{img.width}x{img.height} would be resized to {w}x{h} = {w * h} pixels > image.max_pixels "
                           f"({self.max_pixels}); use extract.preprocess: pad, or leave the image out")
        return self.transform(img)


def draft_size(pre: Preprocess, mode: str) -> int:
    """The smallest short side worth decoding: JPEG decoding can skip finer detail."""
    return pre.resize_size if mode == "crop" else pre.input_size


class Normalize(nn.Module):
    """uint8 (N, 3, H, W) -> float, scaled to 0..1 and normalised with the backbone's mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale - self.shift


class TensorPreprocess:
    """The same preprocessing on decoded uint8 (3, H, W) tensors, or (N, 3, H, W) batches of
    one size, on any device (after GPU JPEG decoding): the same geometry and padding colour as
    the Pillow path, with torch's antialiased resize instead of Pillow's (round-off apart).
    :meth:`many` resizes images of one size together: per-image kernel launches, not
    arithmetic, are the cost on a GPU."""

    def __init__(self, pre: Preprocess, mode: str) -> None:
        check_choice("extract.preprocess", mode, MODES)
        self.pre, self.mode = pre, mode
        self.interpolation = TV_INTERPOLATION[pre.interpolation]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.mode == "crop":
            img = v2.functional.resize(img, [self.pre.resize_size], interpolation=self.interpolation, antialias=True)
            return v2.functional.center_crop(img, [self.pre.input_size, self.pre.input_size])
        return self.letterbox(img)

    def many(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[self(img) for img in images]``, computed once per distinct image size."""
        out: list[torch.Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.shape), []).append(i)
        for indices in by_size.values():
            done = self(torch.stack([images[i] for i in indices])) if len(indices) > 1 else self(images[indices[0]])[None]
            for i, img in zip(indices, done):
                out[i] = img
        return out  # type: ignore[return-value]

    def letterbox(self, img: torch.Tensor) -> torch.Tensor:
        size, (h, w) = self.pre.input_size, img.shape[-2:]
        new_w, new_h, left, top = letterbox_geometry(w, h, size)
        flat = img.reshape(-1, *img.shape[-3:])  # (B, 3, H, W)
        fills = torch.tensor([border_colour(x.permute(1, 2, 0).cpu().numpy()) for x in flat], dtype=torch.uint8,
                             device=img.device)
        out = fills[:, :, None, None].expand(-1, -1, size, size).clone()
        if min(new_w, new_h) > 0:
            out[..., top:top + new_h, left:left + new_w] = v2.functional.resize(
                flat, [new_h, new_w], interpolation=self.interpolation, antialias=True)
        return out.reshape(*img.shape[:-2], size, size)


def describe_preprocessing(pre: Preprocess, mode: str, image_cfg: ImageParams) -> dict:
    """Every step from an image file to the exported network's uint8 input, as data a consumer
    with only Pillow and numpy can follow (tests/test_export.py follows it and gets the
    pipeline's probabilities to 1e-4). The code that does it: plankton_transfer/data/images.py
    (open and convert), this module (resize and pad or crop)."""
    resample = {"bilinear": "PIL.Image.Resampling.BILINEAR", "bicubic": "PIL.Image.Resampling.BICUBIC"}
    steps = {
        "open": "PIL.Image.open; a multi-frame file (GIF, TIFF) uses its first frame",
        "jpeg_draft": {"applies_to": "JPEG files", "call": f"image.draft('RGB', ({draft_size(pre, mode)}, "
                       f"{draft_size(pre, mode)})) before the pixels are loaded (decodes at a reduced scale when the "
                       "image is at least twice this size)", "size": draft_size(pre, mode)},
        "exif_orientation": "PIL.ImageOps.exif_transpose when the EXIF orientation tag (0x0112) is 2-8",
        "to_rgb": {
            "RGB": "as is", "L": "copied to 3 channels",
            "I;16, I;16B, I;16L, I;16N, I, F": "greyscale stretched linearly from the image's own finite minimum "
                                               "to its maximum onto 0..255 (numpy.rint, clipped; a flat image is 0; "
                                               "NaN counts as the minimum), then copied to 3 channels",
            "P with transparency": "converted to RGBA, then as RGBA",
            "RGBA, LA, PA, La, RGBa": "converted to RGBA and alpha-composited onto an opaque image of colour "
                                      "'background', then RGB",
            "other modes": "PIL Image.convert('RGB')",
        },
        "background": list(image_cfg.background),
    }
    if mode == "pad":
        steps["resize"] = {
            "mode": "pad", "size": pre.input_size, "resample": resample[pre.interpolation],
            "geometry": "PIL.ImageOps.pad(image, (size, size), centering=(0.5, 0.5)): the longer side becomes size, "
                        "the other round(shorter / longer * size); pasted at left = round((size - new_width) * 0.5), "
                        "top = round((size - new_height) * 0.5); a side of 0 pastes nothing",
            "fill": "per channel, numpy.median of the concatenation of the first row, the last row, the first column "
                    "and the last column of the RGB image before resizing (corner pixels count twice), truncated "
                    "with int()",
        }
    else:
        steps["resize"] = {
            "mode": "crop", "resize_size": pre.resize_size, "size": pre.input_size,
            "resample": resample[pre.interpolation],
            "geometry": "resize so the shorter side is resize_size and the longer int(resize_size * longer / shorter) "
                        "(PIL Image.resize), then crop size x size at left = round((width - size) / 2), "
                        "top = round((height - size) / 2) (torchvision Resize + CenterCrop)",
        }
    steps["tensor"] = "numpy.asarray(image) (H, W, 3) uint8, transposed to (3, H, W), stacked to (N, 3, H, W)"
    return steps
