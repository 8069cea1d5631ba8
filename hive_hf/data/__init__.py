"""Data for HIVE pre-training: the embedded synthetic captioned-shapes set and robust image-caption loading.

``load_caption_dataset(source, ...)`` returns a dataset with an ``image`` column (``Image(decode=False)``: rows hold
``{"bytes", "path"}``) and a ``caption`` column; ``decode_image`` turns an image entry into RGB PIL or ``None`` for a
bad file, which the training collators skip and count.
"""

from .captions import (
    CAPTION_COLUMN,
    IMAGE_COLUMN,
    check_source_exists,
    decode_image,
    load_caption_dataset,
)
from .synthetic import (
    COLORS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    draw_shapes,
    make_shapes_dataset,
    shapes_caption,
    shapes_features,
)

__all__ = [
    "CAPTION_COLUMN",
    "COLORS",
    "IMAGE_COLUMN",
    "NUMBER_WORDS",
    "POSITIONS",
    "SHAPES",
    "check_source_exists",
    "decode_image",
    "draw_shapes",
    "load_caption_dataset",
    "make_shapes_dataset",
    "shapes_caption",
    "shapes_features",
]
