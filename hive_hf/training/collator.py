"""Batches image-caption rows for HIVE training; unreadable images are skipped and counted, never fatal."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

from ..data.captions import decode_image

logger = logging.get_logger(__name__)

SKIPPED_KEY = "num_skipped_images"


class HiveCaptionCollator:
    """`HiveProcessor` over a list of `{"image": ..., "caption": ...}` rows, with `labels` for the LM loss.

    Images may be PIL images, bytes, `{"bytes", "path"}` dicts (a `datasets.Image(decode=False)` column) or paths.
    Rows whose image is missing or unreadable, or whose caption is empty, are dropped; the batch carries their count
    under `num_skipped_images`, which `HiveTrainer` removes and sums (so counts from DataLoader workers and from
    every process add up). A batch with no usable row repeats the last good row rather than stopping the run.
    """

    def __init__(
        self,
        processor: Any,
        prompt: str | None = None,
        max_length: int | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
    ):
        self.processor = processor
        self.prompt = prompt
        self.max_length = max_length
        self.image_column = image_column
        self.caption_column = caption_column
        self._last_good: tuple[Any, str] | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images, captions = [], []
        for row in rows:
            image = decode_image(row.get(self.image_column))
            caption = row.get(self.caption_column)
            if image is None or not isinstance(caption, str) or not caption.strip():
                continue
            images.append(image)
            captions.append(caption)
        skipped = len(rows) - len(images)
        if not images:
            if self._last_good is None:
                raise ValueError(
                    f"None of the {len(rows)} rows of the first batch has a readable image and a caption: check "
                    f"--image_column {self.image_column!r} and --caption_column {self.caption_column!r}."
                )
            logger.warning("A batch had no readable image; repeating the last good row in its place.")
            images, captions = [self._last_good[0]], [self._last_good[1]]
        else:
            self._last_good = (images[-1], captions[-1])
        batch = self.processor(
            images=images, text=captions, prompt=self.prompt, max_length=self.max_length, add_eos=True,
            return_labels=True,
        )
        batch = dict(batch)
        batch[SKIPPED_KEY] = torch.tensor(skipped)
        return batch
