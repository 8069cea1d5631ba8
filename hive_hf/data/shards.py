"""WebDataset shards: writing them from any caption dataset, and giving each reader of a stream its own.

A streamed run reads tar shards (`load_caption_dataset(folder, streaming=True)`). Its *readers* are its processes
times the DataLoader workers of each (`--dataloader_num_workers`, 0 counting as one): every reader gets whole shards
of its own (`split_stream`), so no image is read twice, and a reader's position in the stream is a shard and an
offset in it, which a checkpoint can hold (`hive_hf.training.streaming`).

The shard rule: write a number of shards that is a multiple of the readers of every run that will read them (e.g.
8 processes x 4 workers = 32 readers: 256 or 1024 shards), and at least as many shards as readers. Fewer is an error
(a reader would have nothing to read); a count the processes do not divide is an error too, since `datasets` would
then have every process read every shard; a count the readers do not divide works, but some readers run dry first.
Keeping processes x workers fixed keeps the global batches fixed: 1 process with 4 workers trains on the same
batches as 2 processes with 2 workers each.

`write_shards` turns any caption dataset (an imagefolder, the embedded shapes, anything `load_caption_dataset`
reads) into such shards, optionally shuffled: a stream is read in its stored order, so the rows are shuffled when
they are written.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node
from transformers.utils import logging

from .captions import CAPTION_COLUMN, IMAGE_COLUMN, decode_image

logger = logging.get_logger(__name__)

__all__ = ["IMAGE_FORMATS", "ShardsWritten", "num_readers", "split_stream", "stream_shards", "write_shards"]

# How images are stored: re-encoded as JPEG (the web-scale norm: what the paper's data are) or PNG (lossless).
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}
JPEG_QUALITY = 95


@dataclass
class ShardsWritten:
    """What `write_shards` wrote: the shard files, the rows in each, and the rows skipped (unreadable image or no
    caption)."""

    paths: list[Path] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    skipped: int = 0


def write_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    output_dir: str | Path,
    samples_per_shard: int | None = None,
    num_shards: int | None = None,
    image_format: str = "jpg",
    shuffle_seed: int | None = None,
    prefix: str = "shard",
) -> ShardsWritten:
    """Write `dataset` (an `image` and a `caption` column, as `load_caption_dataset` returns) as WebDataset shards
    `<output_dir>/<prefix>-000000.tar`, ...: per row `<key>.jpg` (or `.png`) and `<key>.txt`, keys numbered in
    writing order.

    Args:
        samples_per_shard: rows per shard (the last one may hold fewer); or give `num_shards` instead.
        num_shards: how many shards, with rows spread evenly (a map-style dataset only: its length must be known).
            See the module docstring for how many to write.
        image_format: `"jpg"` (quality 95) or `"png"`.
        shuffle_seed: shuffle the rows before writing (map-style only); None keeps the stored order.

    Rows whose image cannot be decoded or whose caption is empty are skipped and counted. Each shard is written
    under a temporary name and renamed when complete, so a folder never holds a half-written shard.

    Raises:
        ValueError: not exactly one of `samples_per_shard` / `num_shards` given, either not positive, `num_shards`
            or `shuffle_seed` for a stream, more shards than rows, an unknown `image_format`, or missing columns.
    """
    if (samples_per_shard is None) == (num_shards is None):
        raise ValueError("Give exactly one of `samples_per_shard` and `num_shards`.")
    for name, value in (("samples_per_shard", samples_per_shard), ("num_shards", num_shards)):
        if value is not None and value < 1:
            raise ValueError(f"`{name}` must be positive, got {value}.")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"`image_format` must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}.")
    columns = dataset.column_names
    if columns is not None and not {IMAGE_COLUMN, CAPTION_COLUMN} <= set(columns):
        raise ValueError(f"The dataset needs an {IMAGE_COLUMN!r} and a {CAPTION_COLUMN!r} column; it has {columns}.")
    streamed = isinstance(dataset, datasets.IterableDataset)
    if streamed and (num_shards is not None or shuffle_seed is not None):
        raise ValueError("`num_shards` and `shuffle_seed` need a map-style dataset (its length); give "
                         "`samples_per_shard` for a stream.")
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=shuffle_seed)
    if num_shards is not None:
        if num_shards > len(dataset):
            raise ValueError(f"`num_shards` {num_shards} is more than the dataset's {len(dataset)} rows.")
        # shard i holds rows [i*n//k, (i+1)*n//k): sizes differ by at most one
        bounds = [i * len(dataset) // num_shards for i in range(num_shards + 1)]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    else:
        sizes = None

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = ShardsWritten()
    rows = _encoded_rows(dataset, IMAGE_FORMATS[image_format], written)
    started, key = time.time(), 0
    while sizes is None or len(written.paths) < len(sizes):
        size = samples_per_shard if sizes is None else sizes[len(written.paths)]
        path = output_dir / f"{prefix}-{len(written.paths):06d}.tar"
        count = _write_one_shard(path, rows, size, key, image_format)
        if count == 0:
            break
        key += count
        written.paths.append(path)
        written.rows.append(count)
        if count < size:  # the rows ran out
            break
    logger.info(f"Wrote {key} rows in {len(written.paths)} shards to {output_dir} in {time.time() - started:.0f} s"
                + (f"; skipped {written.skipped} unreadable rows" if written.skipped else ""))
    return written


def _encoded_rows(dataset: Iterable[dict[str, Any]], pil_format: str, written: ShardsWritten):
    """(encoded image, caption) per usable row; unusable rows are counted in `written.skipped`."""
    for row in dataset:
        image, caption = decode_image(row[IMAGE_COLUMN]), row[CAPTION_COLUMN]
        if image is None or not isinstance(caption, str) or not caption.strip():
            written.skipped += 1
            continue
        buffer = io.BytesIO()
        image.save(buffer, format=pil_format, **({"quality": JPEG_QUALITY} if pil_format == "JPEG" else {}))
        yield buffer.getvalue(), caption


def _write_one_shard(path: Path, rows, size: int, first_key: int, extension: str) -> int:
    partial = path.with_name(path.name + ".partial")
    count = 0
    with tarfile.open(partial, "w") as tar:
        for image, caption in rows:
            key = f"{first_key + count:09d}"
            for name, data in ((f"{key}.{extension}", image), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0  # mtime 0: the same rows give the same bytes
                tar.addfile(info, io.BytesIO(data))
            count += 1
            if count == size:
                break
    if count:
        os.replace(partial, path)
    else:
        partial.unlink()
    return count


def stream_shards(dataset: datasets.IterableDataset) -> int:
    """How many shards (files) a stream has: the most readers it can feed."""
    return dataset.num_shards if hasattr(dataset, "num_shards") else dataset.n_shards  # `n_shards` before datasets 3.3


def num_readers(world_size: int, num_workers: int) -> int:
    """A stream's readers: the processes times the DataLoader workers of each (0 workers: the process reads)."""
    return world_size * max(1, num_workers)


def split_stream(dataset: datasets.IterableDataset, rank: int, world_size: int,
                 num_workers: int) -> datasets.IterableDataset:
    """This process's part of `dataset`: whole shards of its own (`datasets.distributed.split_dataset_by_node`),
    which its DataLoader workers split again by shard (`datasets` does that in each worker). Process p, worker w
    reads shards p + N*w + N*W*k (N processes, W workers), as worker p + N*w of a single process with N*W workers
    would: the same readers give the same batches on any process count.

    Raises `ValueError` when the stream has fewer shards than readers, or a count the processes do not divide (see
    the module docstring for the rule)."""
    shards, readers = stream_shards(dataset), num_readers(world_size, num_workers)
    workers = max(1, num_workers)
    setup = f"{world_size} process(es) x {workers} DataLoader worker(s) = {readers} readers"
    advice = (f"write a multiple of {readers} shards (python -m hive_hf.cli.write_shards --num_shards ...) or run "
              "fewer processes or `dataloader_num_workers`")
    if shards < readers:
        raise ValueError(f"The stream has {shards} shard(s) for {setup}; each reader needs shards of its own: "
                         f"{advice}.")
    if shards % world_size:
        raise ValueError(f"The stream's {shards} shards cannot be split evenly over {world_size} processes (every "
                         f"process would read every shard); {advice}.")
    if shards % readers:
        logger.warning(f"The stream's {shards} shards are not a multiple of {setup}: some readers run out first, "
                       "and their share of later batches comes from the others.")
    # Also on one process: a new dataset object, so that a loader restoring a position (`load_state_dict`) leaves the
    # caller's dataset as it was (a staged run reads it again in its next stage).
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
