"""Data: the embedded synthetic captioned-shapes set, robust image-caption loading, and VQA benchmarks and
conversations for the VLM evaluation.

``load_caption_dataset(source, ...)`` returns a dataset with an ``image`` column (``Image(decode=False)``: rows hold
``{"bytes", "path"}``) and a ``caption`` column; ``decode_image`` turns an image entry into RGB PIL or ``None`` for a
bad file, which the collators (``collate.SkippingCollator``) skip and count. ``vqa`` reads the benchmarks' own
layouts (GQA, OK-VQA, ScienceQA, MME), LLaVA conversations, and makes the synthetic shapes VQA. ``shards`` writes
WebDataset shards (``write_shards``) and gives each reader of a stream its own (``split_stream``).
"""

from .captions import (
    CAPTION_COLUMN,
    IMAGE_COLUMN,
    check_source_exists,
    decode_image,
    load_caption_dataset,
)
from .shards import split_stream, write_shards
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
    "split_stream",
    "write_shards",
]
