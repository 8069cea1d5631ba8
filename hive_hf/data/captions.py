"""Loading image-caption data and decoding its images robustly.

:func:`load_caption_dataset` turns any of the usual sources into a dataset with an ``image`` and a ``caption``
column:

* ``"synthetic"``: the embedded captioned-shapes set of :mod:`hive_hf.data.synthetic` (no download);
* a local ``imagefolder`` directory with a ``metadata.jsonl`` / ``metadata.csv`` / ``metadata.parquet`` file;
* a local directory, ``.tar`` file or glob of WebDataset shards (``000000.jpg`` + ``000000.txt`` / ``.json``, ...);
* anything else is handed to ``datasets.load_dataset`` unchanged (a Hub id, a local dataset folder, or a packaged
  builder name such as ``"parquet"`` together with ``data_files``), exactly as a user would call it.

The image column is always cast to ``datasets.Image(decode=False)``, so reading a row yields ``{"bytes", "path"}``
and never decodes inside ``datasets``: a single corrupt or truncated file in a web-scale crawl would otherwise raise
from deep inside the DataLoader and kill the run. Decoding is done by :func:`decode_image`, which returns ``None``
for a bad image so that the caller (the training collators) can skip the row and count it.
"""

from __future__ import annotations

import glob
import io
import os
from typing import Any

import datasets
import PIL.Image
import PIL.ImageOps
from datasets.utils.file_utils import is_local_path, xopen
from transformers.utils import logging

from .synthetic import make_shapes_dataset

logger = logging.get_logger(__name__)

__all__ = [
    "IMAGE_COLUMN",
    "CAPTION_COLUMN",
    "check_source_exists",
    "decode_image",
    "load_caption_dataset",
]

IMAGE_COLUMN = "image"
CAPTION_COLUMN = "caption"

SYNTHETIC_SOURCE = "synthetic"
DEFAULT_SYNTHETIC_SAMPLES = 2000

_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
# WebDataset field names are file extensions, so "image" / "caption" never exist there; these are the conventional
# keys, in order of preference, used when the user left the column flags at their defaults.
_WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "image", "img")
_WDS_CAPTION_KEYS = ("txt", "text", "caption", "json", "jsn")
# Keys looked up inside a JSON caption field (``000000.json`` -> {"caption": ...}).
_JSON_CAPTION_KEYS = ("caption", "text", "txt", "alt_text", "alt")

# What PIL raises for a missing, unreadable, truncated or otherwise bad image. ``UnidentifiedImageError`` and
# ``FileNotFoundError`` are ``OSError`` subclasses; ``ValueError`` comes from some decoders on bad headers;
# ``DecompressionBombError`` is PIL refusing an absurdly large image, which for training data is also "skip it".
_BAD_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    PIL.UnidentifiedImageError,
    ValueError,
    PIL.Image.DecompressionBombError,
)

DatasetLike = datasets.Dataset | datasets.IterableDataset


def decode_image(value: Any) -> PIL.Image.Image | None:
    """Decode one image to RGB, or return ``None`` when it is missing, unreadable or truncated.

    Args:
        value: A ``PIL.Image.Image``, raw encoded bytes, a dict with ``bytes`` and/or ``path`` (what
            ``datasets.Image(decode=False)`` yields), a path string / ``os.PathLike``, or ``None``. Remote paths
            (``hf://``, ``https://``, chained ``zip://...::...``) are read with ``datasets``' ``xopen``.

    Returns:
        A fully loaded RGB image (EXIF orientation applied, transparency composited on white), or ``None``.

    Raises:
        TypeError: ``value`` is of a type that cannot hold an image (a programming error, not a bad image).
    """
    if value is None:
        return None
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            image = PIL.Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                image = PIL.Image.open(io.BytesIO(bytes(data)))
            elif path:
                image = _open_path(path)
            else:
                logger.debug("Image entry has neither bytes nor path: %r", value)
                return None
        elif isinstance(value, (str, os.PathLike)):
            image = _open_path(os.fspath(value))
        else:
            raise TypeError(
                f"decode_image expects a PIL image, bytes, a {{'bytes', 'path'}} dict or a path, "
                f"got {type(value).__name__}."
            )
        # PIL opens lazily: without load() a truncated file would only fail later, e.g. inside the image processor.
        image.load()
        return _to_rgb(image)
    except _BAD_IMAGE_ERRORS as error:
        logger.debug("Skipping undecodable image %s: %s: %s", _describe(value), type(error).__name__, error)
        return None


def _open_path(path: str) -> PIL.Image.Image:
    if is_local_path(path):
        return PIL.Image.open(path)
    # Remote (or chained archive) path: read the bytes through datasets' fsspec-based opener, which knows hf://,
    # http(s):// and "zip://member::url" paths as produced by streaming builders.
    with xopen(path, "rb") as handle:
        return PIL.Image.open(io.BytesIO(handle.read()))


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    # Phone pictures store their rotation in EXIF; apply it so the caption's "left"/"top" match the pixels.
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        # A plain convert("RGB") would turn transparent pixels into whatever colour they hide (often black).
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return repr(value.get("path") or f"<{len(value.get('bytes') or b'')} bytes>")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return repr(value)


def load_caption_dataset(
    source: str,
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    split: str = "train",
    streaming: bool = False,
    data_files: Any = None,
    max_samples: int | None = None,
    seed: int = 0,
    **load_kwargs: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load an image-caption dataset with columns ``image`` (``Image(decode=False)``) and ``caption``.

    Other columns of the source are kept as they are (e.g. ``label`` of the synthetic set, ``__key__`` of shards).

    Args:
        source: ``"synthetic"``; a local imagefolder directory with a ``metadata.jsonl`` / ``.csv`` / ``.parquet``;
            a local directory, ``.tar`` file or glob of WebDataset shards; or anything ``datasets.load_dataset``
            accepts (Hub id, local dataset folder, packaged builder name with ``data_files``).
        image_column: Column holding the images (``--image_column``). For WebDataset shards, when left at
            ``"image"``, the first of ``jpg``, ``jpeg``, ``png``, ``webp`` present is used.
        caption_column: Column holding the captions (``--caption_column``). For WebDataset shards, when left at
            ``"caption"``, the first of ``txt``, ``text``, ``caption``, ``json`` present is used. A JSON/struct
            column is reduced to its ``caption`` (or ``text``) field; ``"json.caption"`` names a field explicitly.
        split: Split to load (``datasets`` slicing such as ``"train[:1%]"`` works for map-style sources).
        streaming: Return a ``datasets.IterableDataset`` instead of a map-style ``datasets.Dataset``.
        data_files: Passed to ``datasets.load_dataset`` (not allowed with ``"synthetic"``).
        max_samples: Keep only the first ``max_samples`` rows; for ``"synthetic"``, the number of rows generated
            (default 2000).
        seed: Seed of the synthetic set; other sources are returned in their stored order (shuffling is left to
            the trainer).
        **load_kwargs: Passed to ``datasets.load_dataset`` (e.g. ``cache_dir``, ``revision``, ``name``); for
            ``"synthetic"`` only ``image_size`` is accepted.

    Raises:
        FileNotFoundError: ``source`` is a local path with nothing there (see :func:`check_source_exists`).
        ValueError: A column is missing or unusable (the message lists the columns found and the flag to pass), no
            file matches a glob, ``max_samples`` is not positive, or an option does not apply to the source.
    """
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"`max_samples` must be a positive integer or None, got {max_samples!r}.")
    if image_column == caption_column:
        raise ValueError(
            f"--image_column and --caption_column are both {image_column!r}; they must name different columns."
        )

    if source == SYNTHETIC_SOURCE:
        return _load_synthetic(image_column, caption_column, split, streaming, data_files, max_samples, seed,
                               load_kwargs)

    check_source_exists(source)
    builder, builder_kwargs = _resolve_source(source, split, data_files)
    is_webdataset = builder == "webdataset"
    logger.info("Loading caption dataset %r with builder %r (split=%r, streaming=%s)", source, builder, split,
                streaming)
    dataset = datasets.load_dataset(builder, split=split, streaming=streaming, **builder_kwargs, **load_kwargs)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        # Only happens when a caller passes split=None: be explicit rather than guess a split.
        raise ValueError(f"{source!r} has several splits {list(dataset)}; pass one as `split`.")

    features = dataset.features
    columns = list(features) if features is not None else _peek_columns(dataset)
    image_key = _resolve_column(source, columns, image_column, IMAGE_COLUMN, "image", "--image_column",
                                _WDS_IMAGE_KEYS if is_webdataset else ())
    caption_key = _resolve_column(source, columns, caption_column, CAPTION_COLUMN, "caption", "--caption_column",
                                  _WDS_CAPTION_KEYS if is_webdataset else ())
    if features is not None:
        _check_image_feature(source, image_key, features)
        # Keep `features` in sync with the cast: _select_caption_field derives the map's output features from it.
        features = datasets.Features({**features, image_key: datasets.Image(decode=False)})
    # Cast before anything else: a streaming dataset decodes its rows with the features in force when each
    # map/rename/take is chained, so a rename done before the cast would still decode (and crash on) bad images.
    dataset = _cast_image(dataset, image_key)

    # Truncate early: the caption extraction below then touches at most max_samples rows.
    dataset = _first_rows(dataset, max_samples)
    dataset, caption_key, columns = _select_caption_field(dataset, source, caption_key, columns, features)
    return _canonical_columns(dataset, source, image_key, caption_key, columns)


def _first_rows(dataset: datasets.Dataset | datasets.IterableDataset,
                max_samples: int | None) -> datasets.Dataset | datasets.IterableDataset:
    """The first `max_samples` rows (all of them for None)."""
    if max_samples is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(max_samples)
    return dataset.select(range(max_samples)) if max_samples < len(dataset) else dataset


def _canonical_columns(dataset: datasets.Dataset | datasets.IterableDataset, source: str, image_key: str,
                       caption_key: str, columns: list[str]) -> datasets.Dataset | datasets.IterableDataset:
    """Rename the image and caption columns to `image` and `caption`, dropping any *other* column that already carries
    one of those names (e.g. the user picked --image_column image_hr while an "image" thumbnail column exists)."""
    clashes = [name for name in (IMAGE_COLUMN, CAPTION_COLUMN) if name in columns and name not in (image_key, caption_key)]
    if clashes:
        logger.info("Dropping column(s) %s of %r, replaced by the selected image/caption columns.", clashes, source)
        dataset = dataset.remove_columns(clashes)
    renames = {key: name for key, name in ((image_key, IMAGE_COLUMN), (caption_key, CAPTION_COLUMN)) if key != name}
    return dataset.rename_columns(renames) if renames else dataset


def _load_synthetic(
    image_column: str,
    caption_column: str,
    split: str,
    streaming: bool,
    data_files: Any,
    max_samples: int | None,
    seed: int,
    load_kwargs: dict[str, Any],
) -> DatasetLike:
    if data_files is not None:
        raise ValueError("`data_files` does not apply to source='synthetic'; drop it or pick another source.")
    unexpected = sorted(set(load_kwargs) - {"image_size"})
    if unexpected:
        raise ValueError(f"source='synthetic' only accepts image_size as an extra option, got {unexpected}.")
    if (image_column, caption_column) != (IMAGE_COLUMN, CAPTION_COLUMN):
        logger.warning(
            "Ignoring --image_column=%r / --caption_column=%r: the synthetic set always uses 'image' and 'caption'.",
            image_column, caption_column,
        )
    dataset = make_shapes_dataset(
        num_samples=max_samples or DEFAULT_SYNTHETIC_SAMPLES, seed=seed, split=split, **load_kwargs
    )
    dataset = _cast_image(dataset, IMAGE_COLUMN)
    return dataset.to_iterable_dataset() if streaming else dataset


def _resolve_source(source: str, split: str, data_files: Any) -> tuple[str, dict[str, Any]]:
    """Map ``source`` to a ``datasets.load_dataset`` builder/path and its keyword arguments."""
    extra: dict[str, Any] = {} if data_files is None else {"data_files": data_files}
    # The split name without a slice ("train[:10]" -> "train"): key of data_files given as {split: files}.
    split_name = split.split("[", 1)[0] if isinstance(split, str) else "train"
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        if _find_files(expanded, _METADATA_FILES):
            return "imagefolder", {"data_dir": expanded, **extra}
        if _find_files(expanded, ("*.tar",)):
            # data_dir (not data_files) lets datasets infer splits from shard names such as "validation-000.tar".
            return "webdataset", {"data_dir": expanded, **extra}
        return source, extra
    if os.path.isfile(expanded) and expanded.endswith(".tar"):
        return "webdataset", {"data_files": data_files or {split_name: [expanded]}}
    if glob.has_magic(expanded) and not _looks_remote(source):
        matches = sorted(glob.glob(expanded, recursive=True))
        if not matches:
            raise ValueError(f"No file matches the pattern {source!r}; check the path given as the dataset source.")
        tars = [path for path in matches if path.endswith(".tar")]
        if len(tars) != len(matches):
            raise ValueError(
                f"The pattern {source!r} matches non-.tar files (e.g. {sorted(set(matches) - set(tars))[:3]}); a glob "
                "source must name WebDataset .tar shards. For other formats pass the builder name as the source and "
                "the files as data_files (e.g. source='parquet', data_files='data/*.parquet')."
            )
        return "webdataset", {"data_files": data_files or {split_name: tars}}
    return source, extra


def check_source_exists(source: str, what: str = "the dataset path") -> None:
    """Raise `FileNotFoundError` ("<what> '<source>' does not exist") when `source` is written as a local path
    (absolute, `./`, `../`, `~`, more than one `/`, or inside an existing folder) and nothing is there. Other names are
    left to the loader: Hub ids such as `user/name`, `datasets` builder names."""
    if _looks_remote(source) or glob.has_magic(source):
        return
    expanded = os.path.expanduser(source)
    if os.path.exists(expanded):
        return
    parent = os.path.dirname(expanded.rstrip("/"))
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or (parent and os.path.isdir(parent)):
        raise FileNotFoundError(f"{what} {source!r} does not exist")


def _find_files(directory: str, patterns: tuple[str, ...]) -> list[str]:
    # The top level and one level of split sub-folders ("train/", "validation/") only: a full walk of a folder of
    # millions of images would take minutes before anything is loaded.
    found: list[str] = []
    for pattern in patterns:
        found += glob.glob(os.path.join(glob.escape(directory), pattern))
        found += glob.glob(os.path.join(glob.escape(directory), "*", pattern))
    return found


def _looks_remote(source: str) -> bool:
    return "://" in source


def _peek_columns(dataset: DatasetLike) -> list[str]:
    # Streaming datasets of untyped files (JSON lines, ...) may not know their features. With no features there is
    # no Image feature either, so reading one row decodes nothing and cannot fail on a bad image.
    for row in dataset.take(1):
        return list(row)
    return []


def _resolve_column(
    source: str,
    columns: list[str],
    requested: str,
    default: str,
    role: str,
    flag: str,
    aliases: tuple[str, ...],
) -> str:
    if requested in columns:
        return requested
    # A dotted name such as "json.caption" selects a field of a struct column; checked in _select_caption_field.
    if role == "caption" and "." in requested and requested.split(".", 1)[0] in columns:
        return requested
    if requested == default:
        for alias in aliases:
            if alias in columns:
                logger.info("Using WebDataset key %r of %r as the %s column.", alias, source, role)
                return alias
    raise ValueError(
        f"The {role} column {requested!r} was not found in {source!r}; columns found: {columns}. "
        f"Pass {flag} <name> to choose the {role} column."
    )


def _check_image_feature(source: str, key: str, features: datasets.Features) -> None:
    feature = features[key]
    if isinstance(feature, datasets.Image):
        return
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary", "large_binary"):
        return  # paths or encoded bytes: castable to Image
    if isinstance(feature, dict) and ("bytes" in feature or "path" in feature):
        return
    raise ValueError(
        f"The image column {key!r} of {source!r} has type {feature}, which holds neither images, encoded bytes nor "
        f"paths. Pass --image_column <name> to choose the image column; columns found: {list(features)}."
    )


def _select_caption_field(
    dataset: DatasetLike,
    source: str,
    caption_key: str,
    columns: list[str],
    features: datasets.Features | None,
) -> tuple[DatasetLike, str, list[str]]:
    """Reduce a JSON/struct caption column to one string field; return the dataset, caption column and columns."""
    if caption_key in columns:
        column, field = caption_key, None
        feature = features[column] if features is not None else None
        if not isinstance(feature, dict):
            if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string"):
                raise ValueError(
                    f"The caption column {caption_key!r} of {source!r} has type {feature.dtype}, not text. Pass "
                    f"--caption_column <name> to choose the caption column; columns found: {columns}."
                )
            return dataset, caption_key, columns
        field = next((name for name in _JSON_CAPTION_KEYS if name in feature), None)
        if field is None:
            raise ValueError(
                f"The caption column {caption_key!r} of {source!r} is a record with fields {list(feature)} and none "
                f"of {list(_JSON_CAPTION_KEYS)}. Pass --caption_column {caption_key}.<field> to choose the field."
            )
    else:
        column, field = caption_key.split(".", 1)
        feature = features[column] if features is not None else None
        if feature is not None and (not isinstance(feature, dict) or field not in feature):
            found = list(feature) if isinstance(feature, dict) else "none (not a record)"
            raise ValueError(
                f"The caption column {caption_key!r} of {source!r} was not found: column {column!r} has fields "
                f"{found}. Pass --caption_column <name> to choose the caption column; columns found: {columns}."
            )

    target = f"{column}.{field}"
    logger.info("Using field %r of %r as the caption column.", target, source)

    def extract(record: Any) -> dict[str, Any]:
        return {target: record.get(field) if isinstance(record, dict) else None}

    new_features = None
    if features is not None:
        new_features = datasets.Features({name: feat for name, feat in features.items() if name != column})
        new_features[target] = datasets.Value("string")
    # input_columns: only the record is read, so the (possibly huge) image column is neither decoded nor copied.
    # Passing the features keeps a streaming dataset typed (IterableDataset.map forgets them otherwise).
    dataset = dataset.map(extract, input_columns=[column], remove_columns=[column], features=new_features)
    return dataset, target, [name for name in columns if name != column] + [target]


def _cast_image(dataset: DatasetLike, column: str) -> DatasetLike:
    if dataset.features is None:
        # A streaming dataset with unknown features cannot be cast (datasets needs the full schema), and has no
        # Image feature either, so its rows already hold raw paths/bytes that decode_image accepts.
        logger.debug("Features unknown: leaving the image column %r as raw values.", column)
        return dataset
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image) and not feature.decode:
        return dataset
    return dataset.cast_column(column, datasets.Image(decode=False))
