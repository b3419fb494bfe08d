"""Augmented training images for fine-tuning.

It works on the project's preprocessed images (data/preprocess.py ``make_transform``: uint8
(3, S, S), letterboxed or cropped), so an augmented image is an ordinary input of the one
feature path, and the validation and test images, never passed through :class:`Augment`,
are exactly what extract, evaluate and predict see.

:class:`Augment` fits plankton images: organisms have no up, so any rotation (a random
multiple of 90 degrees, which loses nothing, plus a uniform -45..45 degrees filled with the
image's border colour, the letterbox's padding colour) and mirror flips; a mild zoom (size
tells taxa apart) and brightness change; colour only when asked (greyscale instruments stay
grey). Each image's draws come from its own generator, seeded from (seed, epoch, index)
(:func:`sample_generator`): the same images whatever the number of DataLoader workers, and a
run resumed at an epoch sees what an uninterrupted one saw.

Test-time augmentation (exact views, no randomness) is data/tta.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from plankton_transfer.data.preprocess import border_colour
from plankton_transfer.params.augment import AugmentParams

SMALL_ANGLE = 45.0  # with the multiple of 90 degrees, every angle is reachable


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one training image's draws in one epoch (independent streams per key)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Augment:
    """A random, plankton-fitting change of a uint8 (3, S, S) image; picklable (DataLoader workers)."""

    def __init__(self, cfg: AugmentParams) -> None:
        self.cfg = cfg

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        u = torch.rand(8, generator=generator).tolist()  # always 8 draws: each option keeps its own numbers
        fill = list(border_colour(image.permute(1, 2, 0).numpy()))
        if cfg.rotate:
            image = torch.rot90(image, int(u[0] * 4) % 4, dims=(1, 2))
        if cfg.flip and u[1] < 0.5:
            image = image.flip(-1)
        angle = (2 * u[2] - 1) * SMALL_ANGLE if cfg.rotate else 0.0
        scale = cfg.scale[0] + u[3] * (cfg.scale[1] - cfg.scale[0])
        low, high = cfg.brightness
        factors = [low + v * (high - low) for v in (u[5:8] if cfg.colour else [u[4]] * 3)]
        moved = bool(angle) or not math.isclose(scale, 1.0)
        if not moved and all(math.isclose(f, 1.0) for f in factors):
            return image.contiguous()
        x = image.float()  # torchvision's affine is ~60x slower on uint8 than on float (measured, 224 px)
        if moved:
            x = v2.functional.affine(x, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                                     interpolation=v2.InterpolationMode.BILINEAR, fill=[float(c) for c in fill])
        image = x.mul_(torch.tensor(factors).view(3, 1, 1)).round_().clamp_(0, 255).to(torch.uint8)
        return image.contiguous()


class AugmentedImages(Dataset):
    """The training images of one epoch, augmented: ``images`` (data/loading.py ImageFiles:
    (uint8 image, error, raw) items) with :class:`Augment` applied, each image seeded by
    (seed, epoch, its index). An unreadable image passes through with its error."""

    def __init__(self, images: Dataset, augment: Augment, seed: int, epoch: int) -> None:
        self.images, self.augment, self.seed, self.epoch = images, augment, seed, epoch

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, bool]:
        image, error, raw = self.images[i]
        if error or raw:
            return image, error, raw
        return self.augment(image, sample_generator(self.seed, self.epoch, i)), error, raw
