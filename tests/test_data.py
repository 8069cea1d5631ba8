"""Tests for hive_hf.data: the synthetic captioned-shapes set, caption-dataset loading and robust image decoding.

Every dataset is built locally in ``tmp_path`` (imagefolder with metadata.jsonl/.csv, WebDataset tar shards, JSON
lines), each with deliberately corrupt and truncated images; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hive_hf.data import (
    COLORS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    check_source_exists,
    decode_image,
    load_caption_dataset,
    make_shapes_dataset,
    shapes_caption,
)

# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _raw_images(dataset: datasets.Dataset) -> list[bytes]:
    return [entry["bytes"] for entry in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _solid(index: int, size: int = 12) -> Image.Image:
    """A distinct solid-colour picture per index, so decoded pixels identify which file was read."""
    return Image.new("RGB", (size, size), (40 * index + 10, 200 - 30 * index, 90))


CORRUPT = b"this is not an image at all"
# A valid PNG cut after its header: PIL identifies it, and only load() finds that the pixel data is missing.
TRUNCATED_PNG = _encoded(Image.new("RGB", (64, 64), (1, 2, 3)))[:80]


def _make_imagefolder(root: Path, fmt: str, caption_key: str = "caption") -> Path:
    """3 good PNGs + 1 corrupt + 1 truncated, with a metadata.<fmt> file."""
    root.mkdir(parents=True)
    rows = []
    for i in range(3):
        _solid(i).save(root / f"good{i}.png")
        rows.append({"file_name": f"good{i}.png", caption_key: f"picture number {i}"})
    (root / "corrupt.png").write_bytes(CORRUPT)
    rows.append({"file_name": "corrupt.png", caption_key: "a corrupt file"})
    (root / "truncated.png").write_bytes(TRUNCATED_PNG)
    rows.append({"file_name": "truncated.png", caption_key: "a truncated file"})
    if fmt == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        lines = [f"file_name,{caption_key}"] + [f"{row['file_name']},{row[caption_key]}" for row in rows]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def _add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_webdataset(root: Path, shards: int = 2, per_shard: int = 3) -> Path:
    """WebDataset shards: <key>.jpg + <key>.txt + <key>.json; the last sample of the last shard has a corrupt jpg."""
    root.mkdir(parents=True)
    for shard in range(shards):
        with tarfile.open(root / f"shard-{shard:05d}.tar", "w") as tar:
            for j in range(per_shard):
                index = shard * per_shard + j
                key = f"sample{index:06d}"
                corrupt = shard == shards - 1 and j == per_shard - 1
                jpg = CORRUPT if corrupt else _encoded(_solid(index % 6), "JPEG")
                _add_tar_member(tar, f"{key}.jpg", jpg)
                _add_tar_member(tar, f"{key}.txt", f"text caption {index}".encode())
                _add_tar_member(tar, f"{key}.json", json.dumps({"caption": f"json caption {index}"}).encode())
    return root


@pytest.fixture(scope="module")
def shapes() -> datasets.Dataset:
    return make_shapes_dataset(num_samples=300, image_size=32, seed=0, split="train")


@pytest.fixture()
def cache_dir(tmp_path: Path) -> str:
    # Keep the Arrow caches of map-style loads out of ~/.cache.
    return str(tmp_path / "hf_cache")


# --------------------------------------------------------------------------------------------------------------------
# Synthetic captioned shapes
# --------------------------------------------------------------------------------------------------------------------


def test_synthetic_schema_and_images(shapes: datasets.Dataset) -> None:
    assert len(shapes) == 300
    assert set(shapes.column_names) == {"image", "caption", "shape", "color", "count", "position", "label"}
    assert isinstance(shapes.features["image"], datasets.Image)
    assert shapes.features["label"].names == list(SHAPES)
    for row in shapes.select(range(20)):
        assert isinstance(row["image"], Image.Image)
        assert row["image"].mode == "RGB" and row["image"].size == (32, 32)
    big = make_shapes_dataset(num_samples=4, image_size=48)
    assert all(image.size == (48, 48) and image.mode == "RGB" for image in big["image"])
    assert 4 <= len(SHAPES) <= 5 and 5 <= len(COLORS) <= 6 and len(POSITIONS) == 5


def test_synthetic_is_deterministic_per_seed_and_split(shapes: datasets.Dataset) -> None:
    again = make_shapes_dataset(num_samples=300, image_size=32, seed=0, split="train")
    assert _raw_images(again) == _raw_images(shapes)
    assert again["caption"] == shapes["caption"]
    # A smaller set is a prefix of a larger one (each row has its own random stream).
    assert _raw_images(make_shapes_dataset(num_samples=25))[:25] == _raw_images(shapes)[:25]

    train = _raw_images(shapes)[:50]
    for other in (make_shapes_dataset(50, split="validation"), make_shapes_dataset(50, split="test"),
                  make_shapes_dataset(50, seed=1)):
        images = _raw_images(other)
        # Different streams: at most a handful of coincidental identical pictures, never the same sequence.
        assert sum(a == b for a, b in zip(images, train)) < 5
        assert images != train
    assert _raw_images(make_shapes_dataset(50, split="validation")) != _raw_images(make_shapes_dataset(50, split="test"))


def test_synthetic_covers_all_values(shapes: datasets.Dataset) -> None:
    assert set(shapes["shape"]) == set(SHAPES)
    assert set(shapes["color"]) == set(COLORS)
    assert set(shapes["position"]) == set(POSITIONS)
    assert set(shapes["count"]) == {1, 2, 3}
    # More than one background family (light and dark), so the colour is not the only bright thing.
    corners = {row["image"].getpixel((0, 0))[0] > 128 for row in shapes.select(range(40))}
    assert corners == {True, False}


def test_captions_match_structured_fields(shapes: datasets.Dataset) -> None:
    plural = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses",
              "diamond": "diamonds"}
    for row in shapes:
        noun = row["shape"] if row["count"] == 1 else plural[row["shape"]]
        expected = f"{NUMBER_WORDS[row['count']]} {row['color']} {noun} in the {row['position']}."
        assert row["caption"] == expected
        assert row["label"] == SHAPES.index(row["shape"])
    assert shapes_caption("cross", "red", 3, "top left") == "three red crosses in the top left."
    assert shapes_caption("circle", "blue", 1, "center") == "one blue circle in the center."
    with pytest.raises(ValueError, match="count"):
        shapes_caption("circle", "blue", 4, "center")


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected components of a boolean mask (flood fill; the pictures are tiny)."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


def test_pictures_show_what_the_caption_says() -> None:
    size = 64
    dataset = make_shapes_dataset(num_samples=60, image_size=size, seed=3)
    for row in dataset:
        pixels = np.asarray(row["image"], dtype=np.int32)
        # Pixels within a small distance of the caption's colour: the shapes' interiors.
        mask = np.abs(pixels - np.array(COLORS[row["color"]])).max(axis=-1) <= 40
        assert mask.sum() > 0, row["caption"]
        assert _components(mask) == row["count"], row["caption"]
        left, top, right, bottom = (f * size for f in POSITIONS[row["position"]])
        ys, xs = np.nonzero(mask)
        assert left <= xs.min() and xs.max() < right and top <= ys.min() and ys.max() < bottom, row["caption"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"num_samples": 0}, "num_samples"), ({"image_size": 8}, "image_size"), ({"seed": -1}, "seed"),
     ({"split": ""}, "split")],
)
def test_synthetic_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_shapes_dataset(**kwargs)


# --------------------------------------------------------------------------------------------------------------------
# decode_image
# --------------------------------------------------------------------------------------------------------------------


def test_decode_image_accepts_every_form(tmp_path: Path) -> None:
    picture = _solid(2)
    data = _encoded(picture)
    path = tmp_path / "p.png"
    path.write_bytes(data)
    for value in (picture, data, bytearray(data), {"bytes": data, "path": None}, {"bytes": None, "path": str(path)},
                  {"bytes": data, "path": "does/not/matter.png"}, str(path), path):
        decoded = decode_image(value)
        assert decoded is not None and decoded.mode == "RGB" and decoded.size == picture.size
        assert decoded.getpixel((0, 0)) == picture.getpixel((0, 0))
    grey = decode_image(_encoded(Image.new("L", (5, 5), 77)))
    assert grey.mode == "RGB" and grey.getpixel((2, 2)) == (77, 77, 77)


def test_decode_image_composites_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    decoded = decode_image(_encoded(rgba))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == (255, 255, 255) and decoded.getpixel((0, 0)) == (0, 0, 255)


def test_decode_image_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (10, 20)


@pytest.mark.parametrize(
    "value",
    [None, CORRUPT, TRUNCATED_PNG, {"bytes": CORRUPT, "path": None}, {"bytes": TRUNCATED_PNG, "path": "t.png"},
     {"bytes": None, "path": None}, {"bytes": None, "path": "/no/such/file.png"}, "/no/such/file.png", b""],
    ids=["none", "corrupt", "truncated", "dict-corrupt", "dict-truncated", "dict-empty", "dict-missing-path",
         "missing-path", "empty-bytes"],
)
def test_decode_image_returns_none_for_bad_images(value) -> None:
    assert decode_image(value) is None


def test_decode_image_truncated_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    path.write_bytes(TRUNCATED_PNG)
    # Opening alone succeeds: the failure must come from decode_image's own load().
    Image.open(path)
    assert decode_image(path) is None


def test_decode_image_rejects_non_image_types() -> None:
    with pytest.raises(TypeError, match="decode_image"):
        decode_image(12)


# --------------------------------------------------------------------------------------------------------------------
# load_caption_dataset
# --------------------------------------------------------------------------------------------------------------------


def _assert_decode_false(dataset) -> None:
    feature = dataset.features["image"]
    assert isinstance(feature, datasets.Image) and feature.decode is False


def test_load_synthetic() -> None:
    dataset = load_caption_dataset("synthetic", max_samples=12, seed=5, split="validation")
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 12
    _assert_decode_false(dataset)
    expected = make_shapes_dataset(12, seed=5, split="validation")
    assert dataset["caption"] == expected["caption"]
    assert [row["bytes"] for row in dataset["image"]] == _raw_images(expected)
    image = decode_image(dataset[0]["image"])
    assert image.mode == "RGB" and image.size == (32, 32)
    assert len(load_caption_dataset("synthetic", max_samples=3, image_size=24)[0]["image"]["bytes"]) > 0
    assert decode_image(load_caption_dataset("synthetic", max_samples=3, image_size=24)[0]["image"]).size == (24, 24)

    streamed = load_caption_dataset("synthetic", max_samples=6, seed=5, split="validation", streaming=True)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [row["caption"] for row in streamed] == expected["caption"][:6]

    with pytest.raises(ValueError, match="image_size"):
        load_caption_dataset("synthetic", max_samples=3, revision="main")
    with pytest.raises(ValueError, match="data_files"):
        load_caption_dataset("synthetic", data_files="x.tar")
    with pytest.raises(ValueError, match="max_samples"):
        load_caption_dataset("synthetic", max_samples=0)


def test_a_missing_local_path_says_it_does_not_exist(tmp_path: Path) -> None:
    for source in (str(tmp_path / "none"), "./no/such/folder", "~/no-such-hive-data", "data/for/hive.tar"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_caption_dataset(source)
    check_source_exists("someone/some-dataset")  # a Hub id: left to datasets
    check_source_exists("parquet")  # a builder name
    with pytest.raises(FileNotFoundError, match="--encoder 'missing/x/y' does not exist"):
        check_source_exists("missing/x/y", what="--encoder")


def _check_folder_rows(rows: list[dict]) -> None:
    """Rows of a folder made by _make_imagefolder: 3 good images decode to their pixels, the 2 bad ones to None."""
    by_caption = {row["caption"]: decode_image(row["image"]) for row in rows}
    assert set(by_caption) == {"picture number 0", "picture number 1", "picture number 2", "a corrupt file",
                               "a truncated file"}
    for i in range(3):
        image = by_caption[f"picture number {i}"]
        assert image is not None and image.mode == "RGB" and image.getpixel((3, 3)) == _solid(i).getpixel((3, 3))
    assert by_caption["a corrupt file"] is None
    assert by_caption["a truncated file"] is None


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_load_imagefolder_with_bad_files(tmp_path: Path, cache_dir: str, fmt: str) -> None:
    root = _make_imagefolder(tmp_path / "folder", fmt)
    dataset = load_caption_dataset(str(root), cache_dir=cache_dir)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 5
    _assert_decode_false(dataset)
    assert {"image", "caption"} <= set(dataset.column_names)
    # Reading every row (including the bad ones) must not raise inside datasets.
    _check_folder_rows(list(dataset))
    assert len(load_caption_dataset(str(root), max_samples=2, cache_dir=cache_dir)) == 2


def test_load_imagefolder_streaming(tmp_path: Path) -> None:
    root = _make_imagefolder(tmp_path / "folder", "jsonl")
    dataset = load_caption_dataset(str(root), streaming=True)
    assert isinstance(dataset, datasets.IterableDataset)
    _assert_decode_false(dataset)
    _check_folder_rows(list(dataset))
    assert len(list(load_caption_dataset(str(root), streaming=True, max_samples=2))) == 2


def test_custom_columns_are_renamed(tmp_path: Path, cache_dir: str) -> None:
    root = _make_imagefolder(tmp_path / "folder", "jsonl", caption_key="text")
    for streaming in (False, True):
        dataset = load_caption_dataset(str(root), caption_column="text", streaming=streaming, cache_dir=cache_dir)
        _assert_decode_false(dataset)
        rows = list(dataset)
        assert "text" not in rows[0]
        _check_folder_rows(rows)

    # A generic load_dataset source (JSON lines with path strings) with both columns renamed; the extra "image"
    # column is replaced by the chosen one.
    good, other = tmp_path / "good.png", tmp_path / "other.png"
    _solid(0).save(good)
    _solid(4).save(other)
    lines = [{"photo": str(good), "alt": "a good photo", "image": str(other)},
             {"photo": str(tmp_path / "folder" / "corrupt.png"), "alt": "broken", "image": str(other)}]
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for streaming in (False, True):
        dataset = load_caption_dataset("json", image_column="photo", caption_column="alt", data_files=str(data_file),
                                       streaming=streaming, cache_dir=cache_dir)
        _assert_decode_false(dataset)
        rows = list(dataset)
        assert set(rows[0]) == {"image", "caption"}
        assert [row["caption"] for row in rows] == ["a good photo", "broken"]
        assert decode_image(rows[0]["image"]).getpixel((0, 0)) == _solid(0).getpixel((0, 0))
        assert decode_image(rows[1]["image"]) is None


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_column_raises_actionable_error(tmp_path: Path, cache_dir: str, streaming: bool) -> None:
    root = _make_imagefolder(tmp_path / "folder", "jsonl", caption_key="text")
    with pytest.raises(ValueError, match="--caption_column") as error:
        load_caption_dataset(str(root), streaming=streaming, cache_dir=cache_dir)
    message = str(error.value)
    assert "'caption'" in message and "'text'" in message and "'image'" in message  # missing + found columns
    with pytest.raises(ValueError, match="--image_column") as error:
        load_caption_dataset(str(root), image_column="picture", caption_column="text", streaming=streaming,
                             cache_dir=cache_dir)
    assert "'picture'" in str(error.value)
    with pytest.raises(ValueError, match="different columns"):
        load_caption_dataset(str(root), image_column="text", caption_column="text", cache_dir=cache_dir)


def _check_webdataset_rows(rows: list[dict], prefix: str) -> None:
    assert [row["caption"] for row in rows] == [f"{prefix} caption {i}" for i in range(6)]
    decoded = [decode_image(row["image"]) for row in rows]
    assert all(image is not None and image.size == (12, 12) for image in decoded[:5])
    assert decoded[5] is None  # the corrupt jpg of the last shard


@pytest.mark.parametrize("streaming", [False, True])
def test_load_webdataset_shards(tmp_path: Path, cache_dir: str, streaming: bool) -> None:
    root = _make_webdataset(tmp_path / "shards")
    # A folder of shards, jpg/txt picked automatically.
    dataset = load_caption_dataset(str(root), streaming=streaming, cache_dir=cache_dir)
    _assert_decode_false(dataset)
    _check_webdataset_rows(list(dataset), "text")
    # A glob of shards; the caption taken from the JSON record ("json" -> its "caption" field, or named explicitly).
    for caption_column in ("json", "json.caption"):
        dataset = load_caption_dataset(str(root / "shard-*.tar"), caption_column=caption_column, streaming=streaming,
                                       cache_dir=cache_dir)
        _assert_decode_false(dataset)
        rows = list(dataset)
        assert "json" not in rows[0]
        _check_webdataset_rows(rows, "json")
    # A single shard file, with an explicit image key.
    dataset = load_caption_dataset(str(root / "shard-00000.tar"), image_column="jpg", caption_column="txt",
                                   streaming=streaming, cache_dir=cache_dir)
    assert [row["caption"] for row in dataset] == [f"text caption {i}" for i in range(3)]


def test_webdataset_errors(tmp_path: Path, cache_dir: str) -> None:
    root = _make_webdataset(tmp_path / "shards", shards=1)
    with pytest.raises(ValueError, match="No file matches"):
        load_caption_dataset(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="json.<field>|--caption_column") as error:
        load_caption_dataset(str(root), caption_column="json.title", cache_dir=cache_dir)
    assert "'caption'" in str(error.value)  # lists the fields found in the record
    with pytest.raises(ValueError, match="--image_column"):
        load_caption_dataset(str(root), image_column="png", cache_dir=cache_dir)
