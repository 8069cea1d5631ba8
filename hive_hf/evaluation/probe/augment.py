"""Training-time augmentation of the classification probe, with PIL and numpy only (torchvision is not a dependency).

Reference: "Hierarchical Pre-Training of Vision Encoders with Large Language Models" (arXiv 2604.00086), Sec. 4:
the probe trains with RandomResizedCrop(scale 0.4-1.0, ratio 3/4-4/3, bicubic), a horizontal flip and
ColorJitter(0.2, 0.2, 0.2, 0). Each transform follows torchvision's algorithm (same sampling of crop boxes, same
blend definitions of brightness / contrast / saturation, same HSV shift for hue), so results are comparable with the
authors' torchvision pipeline up to resampling details.

Randomness comes from an explicit ``numpy.random.Generator`` per image: the probe derives it from
``(seed, epoch, row)``, so an image gets the same view whatever the batch order, the DataLoader worker or the number
of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

__all__ = ["ProbeAugmentation", "random_resized_crop_box", "color_jitter"]


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params`: a crop box `(left, top, right, bottom)` covering a random
    fraction `scale` of the area with aspect ratio (w / h) log-uniform in `ratio`; after 10 failed draws, the
    largest central crop whose ratio lies in `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _adjust_hue(image: Image.Image, factor: float) -> Image.Image:
    # torchvision's PIL path: shift the HSV hue channel by `factor` of a full turn (uint8 arithmetic wraps around).
    hue, saturation, value = image.convert("HSV").split()
    shifted = (np.asarray(hue, dtype=np.uint8).astype(np.int16) + int(round(factor * 255))) % 256
    hue = Image.fromarray(shifted.astype(np.uint8), "L")
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def color_jitter(
    image: Image.Image,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    rng: np.random.Generator,
) -> Image.Image:
    """torchvision's `ColorJitter`: the four adjustments in a random order, each factor drawn uniformly from
    `[max(0, 1 - x), 1 + x]` (hue: a shift in `[-hue, hue]` of a full turn); an amount of 0 skips that adjustment.

    PIL's `ImageEnhance` blends exactly as torchvision does: brightness with black, contrast with the mean grey
    level, saturation with the greyscale image.
    """
    amounts = (brightness, contrast, saturation, hue)
    for index in rng.permutation(4):
        amount = amounts[index]
        if amount == 0:
            continue
        if index == 3:
            image = _adjust_hue(image, float(rng.uniform(-amount, amount)))
            continue
        factor = float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount))
        enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[index]
        image = enhancer(image).enhance(factor)
    return image


@dataclass(frozen=True)
class ProbeAugmentation:
    """RandomResizedCrop to `size` x `size` (bicubic) -> horizontal flip -> ColorJitter: the paper's probe recipe.

    Args:
        size: output side in pixels (the encoder's input resolution).
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's aspect ratio (width / height).
        flip_probability: probability of a horizontal flip.
        color_jitter: brightness, contrast, saturation, hue amounts (`ColorJitter`'s arguments).
    """

    size: int
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.0)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"`size` must be a positive number of pixels, got {self.size}.")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"`crop_scale` must satisfy 0 < min <= max <= 1, got {tuple(self.crop_scale)}.")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"`crop_ratio` must satisfy 0 < min <= max, got {tuple(self.crop_ratio)}.")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"`flip_probability` must lie in [0, 1], got {self.flip_probability}.")
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise ValueError(
                "`color_jitter` takes four non-negative amounts (brightness, contrast, saturation, hue <= 0.5), "
                f"got {tuple(self.color_jitter)}."
            )

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """One random view of an RGB `image`, `size` x `size` pixels."""
        box = random_resized_crop_box(image.width, image.height, self.crop_scale, self.crop_ratio, rng)
        view = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        if rng.random() < self.flip_probability:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return color_jitter(view, *self.color_jitter, rng=rng)
