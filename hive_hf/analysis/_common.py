"""Shared pieces of the analysis commands: loading a checkpoint with its processor, the default synthetic image,
and turning `pixel_values` back into a picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..configuration_hive import HiveConfig, vision_token_layout
from ..data.synthetic import draw_shapes, shapes_caption
from ..modeling_hive import HiveForConditionalGeneration
from ..processing_hive import HiveProcessor

# The default picture of the commands: a synthetic-shapes image drawn without jitter, and its caption.
DEFAULT_SHAPES = {"shape": "circle", "color": "red", "count": 2, "position": "top left"}


def load_checkpoint(
    path: str | Path, attn_implementation: str | None = None
) -> tuple[HiveForConditionalGeneration, HiveProcessor]:
    """A HIVE checkpoint folder (or Hub id) and the processor saved with it, in eval mode."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = HiveForConditionalGeneration.from_pretrained(path, **kwargs).eval()
    processor = HiveProcessor.from_pretrained(path)
    return model, processor


def default_image_and_caption(image_size: int = 128) -> tuple[Image.Image, str]:
    """Two red circles in the top left (no jitter, light background) and the caption the synthetic set gives it."""
    image = draw_shapes(**DEFAULT_SHAPES, image_size=max(16, image_size))
    return image, shapes_caption(**DEFAULT_SHAPES)


def to_patch_grid(values: torch.Tensor, config: HiveConfig) -> torch.Tensor:
    """`(..., num_image_tokens)` -> `(..., rows, cols)`, dropping a leading class token (CLIP-like towers)."""
    layout = vision_token_layout(config.vision_config)
    values = values[..., layout.class_tokens:]
    if values.shape[-1] != layout.num_patches:
        rows, cols = layout.grid
        raise ValueError(f"Expected {rows}x{cols} = {layout.num_patches} patch tokens, got {values.shape[-1]}.")
    return values.reshape(*values.shape[:-1], *layout.grid)


def pixels_to_image(pixel_values: torch.Tensor, processor: HiveProcessor | None = None) -> np.ndarray:
    """The model's view of one image, `(H, W, 3)` in [0, 1]: `pixel_values` (3, H, W) with the processor's
    normalisation undone (or min-max scaled when there is no processor)."""
    image = pixel_values.detach().float().cpu()
    proc = getattr(processor, "image_processor", None)
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if mean is not None and std is not None:
        image = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    else:
        image = (image - image.min()) / (image.max() - image.min()).clamp(min=1e-12)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def load_image(path: str | Path | None, image_size: int) -> tuple[Image.Image, str | None]:
    """An RGB image from `path`, or the default synthetic one (with its caption) when `path` is None."""
    if path is None:
        return default_image_and_caption(image_size)
    return Image.open(path).convert("RGB"), None
