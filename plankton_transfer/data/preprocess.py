"""Image preprocessing as a backbone expects it (:class:`~plankton_transfer.data.input_spec.Preprocess`,
carried by each registry entry).

Two modes (``extract.preprocess``):
- ``crop``: the study's Resize(256) + CenterCrop(224) (sizes from the backbone);
- ``pad``: letterbox: resize the longer side to the input size and pad to a square with the
  median colour of the image's border, so long, thin organisms are not cut off and the
  padding matches the background (light for FlowCam/ZooScan, dark for dark-field).

The CPU side (DataLoader workers) produces uint8 CHW tensors: a quarter of the bytes of
float32 to move to the device. :class:`Normalize` scales and normalises on the device.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision.transforms import v2

from plankton_transfer.data.input_spec import Preprocess
from plankton_transfer.params import PREPROCESS_MODES as MODES
from plankton_transfer.params import check_choice

PIL_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
TV_INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def make_transform(pre: Preprocess, mode: str) -> Callable[[Image.Image], torch.Tensor]:
    """A picklable function from an RGB PIL image to a uint8 (3, S, S) tensor."""
    check_choice("extract.preprocess", mode, MODES)
    if mode == "crop":
        return v2.Compose([
            v2.Resize(pre.resize_size, interpolation=TV_INTERPOLATION[pre.interpolation], antialias=True),
            v2.CenterCrop(pre.input_size),
            v2.PILToTensor(),
        ])
    return Letterbox(pre.input_size, pre.interpolation)


class Letterbox:
    """Resize to fit a ``size`` square, keeping the aspect ratio, and pad with the border colour."""

    def __init__(self, size: int, interpolation: str) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        padded = ImageOps.pad(img, (self.size, self.size), method=PIL_INTERPOLATION[self.interpolation],
                              color=border_colour(img))
        return torch.from_numpy(np.asarray(padded).copy()).permute(2, 0, 1)


def border_colour(img: Image.Image) -> tuple[int, int, int]:
    """Median RGB of the outermost pixel ring: the image's background colour."""
    a = np.asarray(img)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0))


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
    one size, on any device.

    Used after GPU JPEG decoding; matches :func:`make_transform` up to resampling round-off
    (torch's antialiased resize against Pillow's). :meth:`many` treats images of one size
    together: one resize per size instead of one per image, since per-image kernel launches,
    not arithmetic, are the cost on a GPU.
    """

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
        """As ``ImageOps.pad``: fit inside the square, centre, fill with the border colour."""
        size, (h, w) = self.pre.input_size, img.shape[-2:]
        if w > h:
            new_w, new_h = size, round(size * h / w)
        else:
            new_w, new_h = round(size * w / h), size
        ring = torch.cat([img[..., 0, :], img[..., -1, :], img[..., :, 0], img[..., :, -1]], dim=-1)
        fill = ring.float().median(dim=-1).values  # (..., 3): each image's own border colour
        resized = v2.functional.resize(img, [new_h, new_w], interpolation=self.interpolation, antialias=True)
        out = fill.round().to(torch.uint8)[..., None, None].expand(*img.shape[:-2], size, size).clone()
        top, left = round((size - new_h) * 0.5), round((size - new_w) * 0.5)
        out[..., top:top + new_h, left:left + new_w] = resized
        return out
