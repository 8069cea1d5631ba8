"""The probe's data: dataset splits, labels shared by every split, and batches of processed (optionally augmented)
images.

Unreadable images are skipped (``hive_hf.data.decode_image``) and counted per split. Augmented views are drawn with
:mod:`.augment`, one generator per image seeded by ``(seed, epoch, row)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from ...data import check_source_exists, decode_image, make_shapes_dataset
from .augment import ProbeAugmentation

__all__ = ["SYNTHETIC_DATASET", "load_probe_datasets"]

SYNTHETIC_DATASET = "synthetic"
# The embedded default: the synthetic shapes, probed on `label` (the shape class).
SYNTHETIC_TRAIN_SAMPLES, SYNTHETIC_TEST_SAMPLES = 2000, 500


def load_probe_datasets(
    dataset: str = SYNTHETIC_DATASET,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    validation_split: str | None = None,
    dataset_config_name: str | None = None,
    test_fraction: float | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """The splits of an image-classification dataset for :func:`run_probe`.

    Args:
        dataset: `"synthetic"` (the embedded shapes: 2000 train / 500 test rows drawn at `image_size`, `label` is the
            shape, one of `hive_hf.data.SHAPES`), a local folder of class subfolders (read as an `imagefolder`;
            `train/` and `test/` subfolders give the splits), or any `datasets.load_dataset` name (e.g. `"cifar10"`
            with `image_column="img"`).
        validation_split: a split to choose the learning rate on (default: none; the probe holds out part of train).
        test_fraction: carve the test split out of `train_split` (seeded by `seed`) when the dataset has none.
        max_train_samples / max_test_samples: keep a seeded random subset of this many rows (imagefolders are
            sorted by class, so a prefix would miss classes); for `"synthetic"`, the number of rows drawn.
        load_kwargs: forwarded to `datasets.load_dataset`.

    Returns:
        A `DatasetDict` with `"train"`, `"test"` and, when asked, `"validation"`.
    """
    if dataset == SYNTHETIC_DATASET:
        if validation_split is not None or test_fraction is not None:
            raise ValueError("The synthetic dataset has fixed train and test splits; drop --validation_split and "
                             "--test_fraction.")
        return _synthetic_splits(max_train_samples, max_test_samples, image_size, seed)
    # A local folder of images is read as an `imagefolder` (labels from the class subfolder names) by datasets.
    check_source_exists(dataset)
    splits = datasets.load_dataset(dataset, dataset_config_name, **load_kwargs)
    for flag, split in (("--train_split", train_split), ("--validation_split", validation_split)):
        if split is not None and split not in splits:
            raise ValueError(f"{flag} {split!r} is not in {dataset!r}; it has splits {list(splits)}.")
    train, test = _train_and_test(splits, dataset, train_split, test_split, test_fraction, seed)
    result = datasets.DatasetDict(
        train=_subset(train, max_train_samples, seed), test=_subset(test, max_test_samples, seed)
    )
    if validation_split is not None:
        result["validation"] = splits[validation_split]
    _check_columns(result, dataset, image_column, label_column)
    return result


def _synthetic_splits(
    max_train_samples: int | None, max_test_samples: int | None, image_size: int, seed: int
) -> datasets.DatasetDict:
    """The embedded shapes, drawn at `image_size`: fixed train and test splits."""
    return datasets.DatasetDict(
        train=make_shapes_dataset(max_train_samples or SYNTHETIC_TRAIN_SAMPLES, image_size, seed, "train"),
        test=make_shapes_dataset(max_test_samples or SYNTHETIC_TEST_SAMPLES, image_size, seed, "test"),
    )


def _train_and_test(
    splits: datasets.DatasetDict,
    dataset: str,
    train_split: str,
    test_split: str,
    test_fraction: float | None,
    seed: int,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training split and the test split: a named one, or `test_fraction` carved out of training (seeded)."""
    train = splits[train_split]
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"--test_fraction must lie in (0, 1), got {test_fraction}.")
        carved = train.train_test_split(test_size=test_fraction, seed=seed)
        return carved["train"], carved["test"]
    if test_split in splits:
        return train, splits[test_split]
    raise ValueError(
        f"--test_split {test_split!r} is not in {dataset!r} (splits: {list(splits)}); name another split or "
        "carve one from the training split with --test_fraction."
    )


def _check_columns(splits: datasets.DatasetDict, dataset: str, image_column: str, label_column: str) -> None:
    for split, rows in splits.items():
        missing = [c for c in (image_column, label_column) if c not in rows.column_names]
        if missing:
            raise ValueError(
                f"The {split} split of {dataset!r} has no column {missing}; its columns are {rows.column_names} "
                "(set --image_column / --label_column)."
            )


def _subset(rows: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    if max_samples is None or max_samples >= len(rows):
        return rows
    return rows.shuffle(seed=seed).select(range(max_samples))


def _encode_labels(
    train: datasets.Dataset, test: datasets.Dataset, others: list[datasets.Dataset], label_column: str
) -> tuple[datasets.Dataset, datasets.Dataset, list[datasets.Dataset], list[str]]:
    """Make `label_column` a ClassLabel shared by every split; returns the splits and the class names."""
    feature = train.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        if feature.dtype == "string":  # e.g. the synthetic set's `color`: names sorted, shared by all splits
            train = train.class_encode_column(label_column)
        else:
            values = sorted({int(v) for split in (train, test, *others) for v in split[label_column]})
            if values and values[0] < 0:
                raise ValueError(f"Column {label_column!r} holds negative labels ({values[0]}): unlabeled rows?")
            names = [str(i) for i in range(values[-1] + 1)] if values else []
            train = train.cast_column(label_column, datasets.ClassLabel(names=names))
        feature = train.features[label_column]
    cast = [
        split.cast_column(label_column, feature) if split.features[label_column] != feature else split
        for split in (test, *others)
    ]
    for split in (train, *cast):
        labels = split[label_column]
        if labels and min(labels) < 0:
            raise ValueError(
                f"Column {label_column!r} holds label -1 in a {split.split or 'given'} split: its rows are unlabeled "
                "(some datasets hide test labels); use another --test_split or --test_fraction."
            )
    return train, cast[0], cast[1:], list(feature.names)


def _readable(rows: datasets.Dataset, image_column: str) -> datasets.Dataset:
    # Decoding happens in `decode_image`, so that a bad file is skipped and counted rather than raising in datasets.
    if isinstance(rows.features[image_column], datasets.Image) and rows.features[image_column].decode:
        rows = rows.cast_column(image_column, datasets.Image(decode=False))
    return rows


def _processor_size(image_processor: Any) -> int | None:
    """The side of the square the image processor outputs by default, if it says (crop size first)."""
    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if size is None or (attr == "crop_size" and not getattr(image_processor, "do_center_crop", False)):
            continue
        get = size.get if isinstance(size, dict) else lambda k, s=size: getattr(s, k, None)
        side = get("height") or get("shortest_edge")
        if side:
            return int(side)
    return None


class _ImageBatches(torch.utils.data.Dataset):
    """One batch of rows per item, keyed by `(epoch, rows)`: decode, optionally augment, run the image processor.

    Each augmented image draws from its own generator seeded by `(seed, epoch, row)`, so views do not depend on
    batch order or DataLoader workers.
    """

    def __init__(
        self,
        rows: datasets.Dataset,
        image_column: str,
        label_column: str,
        image_processor: Any,
        augmentation: ProbeAugmentation | None,
        resize_to: int | None,
        seed: int = 0,
    ):
        self.rows = _readable(rows.select_columns([image_column, label_column]), image_column)
        self.image_column, self.label_column = image_column, label_column
        self.image_processor = image_processor
        self.augmentation = augmentation
        self.resize_to = resize_to
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, list[int]]) -> dict[str, Any]:
        epoch, rows = key
        batch = self.rows[rows]
        images, labels, kept, skipped = [], [], [], []
        for row, value, label in zip(rows, batch[self.image_column], batch[self.label_column]):
            image = decode_image(value)
            if image is None:
                skipped.append(row)
                continue
            if self.augmentation is not None:
                image = self.augmentation(image, np.random.default_rng([self.seed, epoch, row]))
            elif self.resize_to is not None:
                image = image.resize((self.resize_to, self.resize_to), Image.Resampling.BICUBIC)
            images.append(image)
            labels.append(label)
            kept.append(row)
        pixel_values = None
        if images:
            # Images we already brought to the input size only need the processor's rescale and normalisation.
            own_size = self.augmentation is not None or self.resize_to is not None
            kwargs = {"do_resize": False, "do_center_crop": False} if own_size else {}
            pixel_values = self.image_processor(images=images, return_tensors="pt", **kwargs)["pixel_values"]
        return {
            "pixel_values": pixel_values,  # (B, 3, H, W)
            "labels": torch.tensor(labels, dtype=torch.long),
            "rows": torch.tensor(kept, dtype=torch.long),
            "skipped": skipped,
        }


def _keep(batch: Any) -> Any:  # module level, so DataLoader workers can pickle it
    return batch


def _chunks(rows: Sequence[int], size: int) -> list[list[int]]:
    rows = list(rows)
    return [rows[i : i + size] for i in range(0, len(rows), size)]



@dataclass
class _ProbeSplits:
    """The splits one probe reads, their labels encoded alike, and how their images become pixel values."""

    rows: dict[str, datasets.Dataset]  # "train", "test" and, when given, "validation"
    class_names: list[str]
    image_column: str
    label_column: str
    image_processor: Any
    input_size: int  # the side of the images the encoder sees
    resize_to: int | None  # None: the image processor resizes un-augmented images its own way

    def images(self, split: str, augmentation: ProbeAugmentation | None = None) -> _ImageBatches:
        return _ImageBatches(
            self.rows[split], self.image_column, self.label_column, self.image_processor, augmentation, self.resize_to
        )


def _probe_splits(
    train: datasets.Dataset,
    test: datasets.Dataset,
    validation: datasets.Dataset | None,
    image_column: str,
    label_column: str,
    image_processor: Any,
    image_size: int | None,
    encoder_image_size: int,
) -> _ProbeSplits:
    """The splits with one class mapping; images at `image_size`, else the processor's size, else the encoder's."""
    others = [validation] if validation is not None else []
    train, test, others, class_names = _encode_labels(train, test, others, label_column)
    rows = {"train": train, "test": test} | ({"validation": others[0]} if others else {})
    input_size = image_size or _processor_size(image_processor) or encoder_image_size
    return _ProbeSplits(rows, class_names, image_column, label_column, image_processor, input_size, image_size)
