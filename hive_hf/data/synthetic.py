"""Embedded default dataset: deterministic synthetic "captioned shapes" that need no download.

Every picture shows one to three copies of one shape, in one colour, on a plain light or dark background, grouped
in one region of the canvas. The caption is derived from exactly those facts, with a single regular template so that
a tiny language model can learn it quickly::

    "two red circles in the top left."
    "one blue cross in the center."

Sizes and positions get a small per-sample jitter so the task is not a lookup table, but the shapes never overlap
(each copy lives in its own cell of a 2x2 grid over the region), so the count stated in the caption is always visible.

Determinism: the random stream is derived from ``(seed, split)`` with a stable hash (``zlib.crc32``, not Python's
salted ``hash``), images are drawn with PIL only and PNG-encoded by us, so the same ``seed`` and ``split`` give
byte-identical images and identical captions on every run and machine, and different splits give different samples.
Each row has its own random stream keyed by ``(seed, split, index)``, so ``make_shapes_dataset(100)`` is exactly the
first 100 rows of ``make_shapes_dataset(2000)``.
"""

from __future__ import annotations

import io
import zlib

import datasets
import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPES",
    "COLORS",
    "POSITIONS",
    "NUMBER_WORDS",
    "make_shapes_dataset",
    "draw_shapes",
    "shapes_caption",
    "shapes_features",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
"""Shape classes; ``label`` is the index of the shape in this tuple."""

# Saturated colours that stay distinguishable from each other and from both background families even after the
# anti-aliasing downsample of a 32-px picture.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 200, 20),
    "purple": (150, 50, 200),
    "orange": (245, 120, 20),
}

# Region of each position as fractions (left, top, right, bottom) of the canvas: the four quadrants and the centre
# half.
POSITIONS: dict[str, tuple[float, float, float, float]] = {
    "top left": (0.0, 0.0, 0.5, 0.5),
    "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0),
    "bottom right": (0.5, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
}

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}

_PLURALS = {"cross": "crosses"}  # every other shape takes a plain "s"

# Shapes are drawn at this multiple of the target size and downsampled with a box filter: cheap anti-aliasing, so
# 32-px circles look like circles rather than staircases. Resampling in PIL is deterministic.
_SUPERSAMPLE = 4

_MIN_IMAGE_SIZE = 16


def shapes_features() -> datasets.Features:
    """The features of :func:`make_shapes_dataset` (``label`` is a ``ClassLabel`` over :data:`SHAPES`)."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "shape": datasets.Value("string"),
            "color": datasets.Value("string"),
            "count": datasets.Value("int64"),
            "position": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(SHAPES)),
        }
    )


def shapes_caption(shape: str, color: str, count: int, position: str) -> str:
    """The caption of a picture: ``"<number word> <colour> <shape, plural when count > 1> in the <position>."``."""
    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {list(SHAPES)}.")
    if color not in COLORS:
        raise ValueError(f"Unknown color {color!r}; expected one of {list(COLORS)}.")
    if count not in NUMBER_WORDS:
        raise ValueError(f"Unsupported count {count!r}; expected one of {list(NUMBER_WORDS)}.")
    if position not in POSITIONS:
        raise ValueError(f"Unknown position {position!r}; expected one of {list(POSITIONS)}.")
    noun = shape if count == 1 else _PLURALS.get(shape, shape + "s")
    return f"{NUMBER_WORDS[count]} {color} {noun} in the {position}."


def _draw_one(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """Draw ``shape`` centred on ``(cx, cy)`` inside a circle of radius ``r`` (supersampled coordinates)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        # Slightly smaller half-side so a square and a circle of the same r cover a similar area.
        h = r * 0.85
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        # Upright triangle; the centroid sits a little below the box centre, so shift it to look centred.
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {list(SHAPES)}.")


def draw_shapes(
    shape: str,
    color: str,
    count: int,
    position: str,
    image_size: int = 32,
    rng: np.random.Generator | None = None,
    background: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Draw ``count`` copies of ``shape`` in ``color`` in the ``position`` region of an RGB ``image_size`` square.

    ``rng`` drives the jitter (cell choice, size, offset) and, when ``background`` is None, the background shade;
    without it the picture is drawn with no jitter (cells in reading order, mid size, centred) on a light background.
    """
    if count not in NUMBER_WORDS:
        raise ValueError(f"Unsupported count {count!r}; expected one of {list(NUMBER_WORDS)}.")
    if position not in POSITIONS:
        raise ValueError(f"Unknown position {position!r}; expected one of {list(POSITIONS)}.")
    if color not in COLORS:
        raise ValueError(f"Unknown color {color!r}; expected one of {list(COLORS)}.")
    if background is None:
        if rng is None:
            background = (235, 235, 235)
        else:
            # Light or dark family, with a small grey-level jitter so the background is not a constant.
            base = 232 if rng.random() < 0.5 else 28
            level = int(base + rng.integers(-12, 13))
            background = (level, level, level)

    big = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = (f * big for f in POSITIONS[position])
    cell_w, cell_h = (right - left) / 2, (bottom - top) / 2
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    if rng is not None:
        order = rng.permutation(len(cells))
        cells = [cells[i] for i in order]
    fill = COLORS[color]
    for col, row in cells[:count]:
        cell = min(cell_w, cell_h)
        if rng is None:
            radius = 0.35 * cell
            dx = dy = 0.0
        else:
            # Radius between 32% and 44% of the cell; the slack left in the cell bounds the offset so that copies
            # never touch their neighbours (which would make the count ambiguous).
            radius = float(rng.uniform(0.32, 0.44)) * cell
            slack = max(0.0, cell / 2 - radius - 0.06 * cell)
            dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
        cx = left + (col + 0.5) * cell_w + dx
        cy = top + (row + 0.5) * cell_h + dy
        _draw_one(draw, shape, cx, cy, radius, fill)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def _row_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One independent stream per row, keyed by (seed, split, row index): a smaller dataset is a prefix of a larger
    # one with the same seed and split, and no row depends on how much randomness earlier rows consumed. crc32 is
    # stable across processes and Python versions (the built-in hash of a str is salted per process).
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8")), index]))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Fixed encoder settings: the PNG bytes depend only on the pixels, hence the byte-identical guarantee.
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def make_shapes_dataset(
    num_samples: int = 2000, image_size: int = 32, seed: int = 0, split: str = "train"
) -> datasets.Dataset:
    """Generate the synthetic captioned-shapes dataset (in memory, a few seconds for 2000 32-px samples).

    Args:
        num_samples: Number of rows.
        image_size: Side of the square RGB pictures, in pixels (at least 16).
        seed: Base seed; together with ``split`` it fully determines the rows.
        split: Split name (e.g. ``"train"``, ``"validation"``, ``"test"``); each split draws its own samples.

    Returns:
        A ``datasets.Dataset`` with columns ``image`` (``Image()``, RGB PIL on access), ``caption``, ``shape``,
        ``color``, ``count``, ``position`` and ``label`` (``ClassLabel`` over :data:`SHAPES`).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    if not isinstance(image_size, int) or image_size < _MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an integer >= {_MIN_IMAGE_SIZE} (three shapes must fit in a quadrant), "
            f"got {image_size!r}."
        )
    if not isinstance(seed, int) or seed < 0:
        # numpy's SeedSequence only takes non-negative integers.
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'train', got {split!r}.")

    color_names, position_names = list(COLORS), list(POSITIONS)
    columns: dict[str, list] = {name: [] for name in shapes_features()}
    for i in range(num_samples):
        rng = _row_rng(seed, split, i)
        shape_id = int(rng.integers(len(SHAPES)))
        shape, color = SHAPES[shape_id], color_names[int(rng.integers(len(color_names)))]
        count = int(rng.integers(1, len(NUMBER_WORDS) + 1))
        position = position_names[int(rng.integers(len(position_names)))]
        picture = draw_shapes(shape, color, count, position, image_size, rng=rng)
        columns["image"].append({"bytes": _png_bytes(picture), "path": None})
        columns["caption"].append(shapes_caption(shape, color, count, position))
        columns["shape"].append(shape)
        columns["color"].append(color)
        columns["count"].append(count)
        columns["position"].append(position)
        columns["label"].append(shape_id)

    features = shapes_features()
    info = datasets.DatasetInfo(
        features=features,
        description=(
            f"hive_hf synthetic captioned shapes (seed={seed}, split={split}, image_size={image_size}): "
            f"1-3 copies of one of {len(SHAPES)} shapes in one of {len(COLORS)} colours, in one of "
            f"{len(POSITIONS)} regions."
        )
    )
    return datasets.Dataset.from_dict(columns, features=features, info=info, split=datasets.NamedSplit(split))
